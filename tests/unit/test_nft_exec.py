"""The ``nft`` binary backend without root (a stand-in binary) and the mapping of nft's errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from podnet.cni.errors import CNIError
from podnet.kernel.nft import (
    NftError,
    NftExec,
    NftExists,
    NftNotFound,
    NftPermissionDenied,
    NftSyntaxError,
    NftUnavailable,
    Transaction,
    error_from_stderr,
)

LISTED = {"nftables": [
    {"table": {"family": "inet", "name": "podnet-bridge", "handle": 1}},
    {"set": {"family": "inet", "name": "masq-pods-v4", "table": "podnet-bridge", "type": "ipv4_addr",
             "handle": 1, "elem": [{"elem": {"val": "10.1.0.5", "comment": "n1/c1/eth0"}}, "10.1.0.9"]}},
]}

@pytest.mark.parametrize(("stderr", "klass"), [
    ("/dev/stdin:1:50-57: Error: Could not process rule: No such file or directory\n"
     "delete element inet t s { 10.9.0.7 }\n", NftNotFound),
    ("Error: Could not process rule: File exists", NftExists),
    ("Error: Could not process rule: Operation not permitted", NftPermissionDenied),
    ("/dev/stdin:1:1-3: Error: syntax error, unexpected string", NftSyntaxError),
    ("Error: something new", NftError),
])
def test_error_from_stderr(stderr: str, klass: type[NftError]) -> None:
    err = error_from_stderr("nft -f", stderr)
    assert type(err) is klass and err.stderr == stderr and isinstance(err, CNIError)
    assert "\n" not in err.details


def _fake_binary(tmp_path: Path, code: int, stdout: str = "", stderr: str = "") -> Path:
    """A stand-in for nft that records its argv and stdin and answers as told."""
    (tmp_path / "out").write_text(stdout)
    (tmp_path / "err").write_text(stderr)
    script = tmp_path / "nft"
    script.write_text(f"""#!/bin/sh
echo "$@" > {tmp_path}/argv
cat > {tmp_path}/stdin
cat {tmp_path}/out
cat {tmp_path}/err >&2
exit {code}
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_exec_apply_and_list(tmp_path: Path) -> None:
    nft = NftExec(str(_fake_binary(tmp_path, 0, stdout=json.dumps(LISTED))))
    tx = Transaction("inet", "podnet-bridge").add_table()
    nft.apply(tx)
    assert (tmp_path / "argv").read_text().split() == ["-f", "-"]
    assert (tmp_path / "stdin").read_text() == tx.render()
    state = nft.list_table("inet", "podnet-bridge")
    assert (tmp_path / "argv").read_text().split() == ["-j", "list", "table", "inet", "podnet-bridge"]
    assert state is not None and len(state.elements("masq-pods-v4")) == 2
    os.remove(tmp_path / "argv")
    nft.apply(Transaction("inet", "podnet-bridge"))  # empty: nft is not run at all
    assert not (tmp_path / "argv").exists()


def test_exec_errors(tmp_path: Path) -> None:
    missing = NftExec(str(_fake_binary(tmp_path, 1, stderr="Error: No such file or directory\n")))
    assert missing.list_table("inet", "nope") is None
    with pytest.raises(NftNotFound):
        missing.apply(Transaction("inet", "t").delete_table())
    with pytest.raises(NftUnavailable, match="not found"):
        NftExec(str(tmp_path / "no-such-nft")).apply(Transaction("inet", "t").add_table())


