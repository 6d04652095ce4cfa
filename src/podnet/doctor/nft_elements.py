"""nftables elements owned by attachments that are gone.

podnet-bridge keeps per-attachment elements (``ipMasq``: ``inet podnet-bridge``; ``macspoofchk``:
``bridge podnet-bridge``), each commented with its owner, ``<network>/<containerID>/<ifname>``
(or ``<network>/#<hash>`` when that does not fit; see :func:`podnet.plugins.identity.owner`). An
owner whose attachment is not live leaves a pod address masqueraded, or a port name allowed a MAC,
for whoever gets them next. Only those two tables are read, and in them only elements whose owner
starts with a configured podnet-bridge network; ``--fix`` removes them through
:meth:`podnet.dataplane.plugin_elements.OwnedElements.remove`, after looking up the attachment's veth again.
"""

from __future__ import annotations

from collections.abc import Callable

from podnet.dataplane.plugin_elements import (
    BRIDGE_TABLE,
    Masquerade,
    NftError,
    OwnedElements,
    SpoofCheck,
    backend_in,
)
from podnet.doctor.context import Context
from podnet.doctor.findings import Changed, Finding
from podnet.doctor.live import LiveAttachments
from podnet.doctor.scope import PodnetNetwork
from podnet.plugins.identity import network_token, owner

HASHED = "#"


def tables(netns: str | None) -> list[OwnedElements]:
    nft = backend_in(netns)
    return [Masquerade(nft, BRIDGE_TABLE), SpoofCheck(nft, BRIDGE_TABLE)]


def _network_of(comment: str, nets: list[PodnetNetwork]) -> PodnetNetwork | None:
    return next((n for n in nets if comment.startswith(network_token(n.name) + "/")), None)


def owner_live(live: LiveAttachments, net: PodnetNetwork, comment: str) -> bool | None:
    """Whether the owner's attachment is live; None when that cannot be told."""
    rest = comment[len(network_token(net.name)) + 1:]
    if not rest.startswith(HASHED):
        container_id, sep, ifname = rest.partition("/")
        return bool(sep) and live.is_live(net.name, container_id, ifname)
    owners = {owner(net.name, *v.attachment) for v in live.veths(net.name) if v.attachment is not None}
    if comment in owners:
        return True
    # A live veth whose alias does not name its attachment could be this hashed owner's.
    return None if live.unidentified(net.name) else False


def _remover(ctx: Context, table: OwnedElements, net: PodnetNetwork, comment: str) -> Callable[[], None]:
    def repair() -> None:
        fresh = LiveAttachments.read_now(ctx.netns, [net.name])
        if owner_live(fresh, net, comment) is not False:
            raise Changed(f"the attachment owning {comment!r} is live now; left alone")
        table.remove(lambda c: c == comment)
    return repair


def check_table(ctx: Context, table: OwnedElements, nets: list[PodnetNetwork]) -> list[Finding]:
    found = table.elements(lambda c: _network_of(c, nets) is not None)
    by_owner: dict[str, list[str]] = {}
    for set_name, element in found:
        if element.comment is not None:
            by_owner.setdefault(element.comment, []).append(f"{set_name} {{ {element.key} }}")
    out = []
    for comment, elements in sorted(by_owner.items()):
        net = _network_of(comment, nets)
        if net is None or owner_live(ctx.live, net, comment) is not False:
            continue
        out.append(Finding(
            "nft-orphan", "problem", f"{table.family} {table.table}: {', '.join(elements)}",
            f"{len(elements)} nftables element(s) owned by {comment!r}, whose pod is gone",
            "--fix removes them (podnet's owned-element removal, one transaction)", network=net.name,
            repair=_remover(ctx, table, net, comment)))
    return out


def check(ctx: Context) -> list[Finding]:
    nets = [n for n in ctx.scope.judged if n.bridge]
    if not nets:
        return []
    out: list[Finding] = []
    for table in tables(ctx.netns):
        try:
            out += check_table(ctx, table, nets)
        except NftError as exc:
            out.append(Finding("nft-unreadable", "note", f"{table.family} {table.table}",
                               f"cannot read podnet's nftables table: {exc}",
                               "none; its elements were not checked"))
    return out
