"""nftables, the kube-proxy / knftables shape: transactions built as data (:mod:`.transaction`),
the kernel's table parsed back (:mod:`.state`), backends behind one protocol (:mod:`.protocol`):
in-process libnftables (:mod:`.libnftables`), the ``nft`` binary (:mod:`.exec_backend`) and an
in-memory fake (:mod:`.fake`). Only ``podnet.dataplane`` writes tables with them."""

from podnet.kernel.nft.errors import (
    NftError,
    NftExists,
    NftNotFound,
    NftPermissionDenied,
    NftSyntaxError,
    NftUnavailable,
    error_from_stderr,
)
from podnet.kernel.nft.exec_backend import NftExec
from podnet.kernel.nft.fake import FakeNft
from podnet.kernel.nft.libnftables import LibNftables, backend, close_backend, shared_backend
from podnet.kernel.nft.netlink import table_exists
from podnet.kernel.nft.protocol import Nft
from podnet.kernel.nft.state import ChainState, Element, SetState, TableState, parse_table_json
from podnet.kernel.nft.transaction import (
    COMMENT_MAX,
    FAMILIES,
    Family,
    Op,
    Transaction,
    check_comment,
    check_family,
    check_key,
    check_name,
    check_rule,
)

__all__ = [
    "COMMENT_MAX",
    "FAMILIES",
    "ChainState",
    "Element",
    "FakeNft",
    "Family",
    "LibNftables",
    "Nft",
    "NftError",
    "NftExec",
    "NftExists",
    "NftNotFound",
    "NftPermissionDenied",
    "NftSyntaxError",
    "NftUnavailable",
    "Op",
    "SetState",
    "TableState",
    "Transaction",
    "backend",
    "check_comment",
    "check_family",
    "check_key",
    "check_name",
    "check_rule",
    "close_backend",
    "error_from_stderr",
    "parse_table_json",
    "shared_backend",
    "table_exists",
]
