"""The attachment core of the veth plugins (bridge, routed): what every pod attachment goes through,
written once so that a fix lands in both plugins.

* ADD (:func:`add`): the attachment's lock, pre-flight (never adopt an interface somebody else
  made), then the plugin's own build under a rollback that undoes every step registered so far
  when the build fails, reporting undo failures on the skel's stderr stream, never hiding the
  ADD's own error.
* DEL (:func:`delete`) and GC (:func:`gc`) read only what finds what ADD made: the network's name,
  the ``ipam`` section to delegate to, the plugin's nftables owner strings. A config or CNI_ARGS
  that ADD would refuse never blocks cleanup.
* GC keeps exactly what ``cni.dev/valid-attachments`` keeps
  (:class:`podnet.cni.attachments.ValidAttachments`, the definition IPAM uses too): a veth kept
  while IPAM released its address would let the next ADD hand that address to a second pod.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from podnet.cni import skel
from podnet.cni.attachments import ValidAttachments
from podnet.cni.errors import InvalidEnvironment
from podnet.cni.result import Result
from podnet.kernel.model import Link
from podnet.kernel.netlink import Netlink
from podnet.plugins import agent_notify, ipam_delegate, veth
from podnet.plugins.attachment_lock import Held, attachment_lock, network_lock, sweep
from podnet.plugins.identity import Attachment, alias_ifname, host_veth_name, network_token, owner

_FORWARDING = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}


# ---- ADD ---------------------------------------------------------------------------------------


class Rollback:
    """ADD's undo steps, run newest first when the build fails."""

    def __init__(self, stack: contextlib.ExitStack, stderr: IO[str], plugin: str) -> None:
        self._stack, self._stderr, self._plugin = stack, stderr, plugin

    def push(self, what: str, fn: Callable[..., object], *fn_args: Any) -> None:
        self._stack.callback(self._best_effort, what, fn, *fn_args)

    def _best_effort(self, what: str, fn: Callable[..., object], *fn_args: Any) -> None:
        try:
            fn(*fn_args)
        except Exception as exc:
            self._stderr.write(f"{self._plugin}: rollback: {what} failed: {exc}\n")


@contextlib.contextmanager
def rollback(args: skel.CmdArgs, plugin: str) -> Iterator[Rollback]:
    """Undo on failure only: an explicit success flag, so no path can skip or double the undo."""
    stack = contextlib.ExitStack()
    success = False
    try:
        yield Rollback(stack, args.stderr, plugin)
        success = True
    finally:
        if not success:
            stack.close()


def preflight(host: Netlink, pod: Netlink, att: Attachment) -> None:
    """Checked before anything is reserved: an attachment never adopts or replaces an interface."""
    if pod.find_link(att.ifname) is not None:
        raise InvalidEnvironment(f"interface {att.ifname!r} already exists in {pod.netns.path}",
                                 "the plugin creates the pod's interface itself and never takes over one")
    if host.find_link(att.host_name) is not None:
        raise InvalidEnvironment(f"host interface {att.host_name} of this attachment already exists",
                                 "an earlier ADD was not deleted; run DEL first")


Build = Callable[[Netlink, Netlink, Attachment, Rollback], Result]


def add(args: skel.CmdArgs, plugin: str, build: Build) -> Result:
    """Run ``build`` for this attachment, locked, after pre-flight, rolled back on failure."""
    att = Attachment.of(args)
    with locked(args, att), Netlink() as host, Netlink(args.netns) as pod:
        preflight(host, pod, att)
        with rollback(args, plugin) as undo:
            result = build(host, pod, att, undo)
        # Still under the attachment's lock, so a DEL's release cannot overtake this admission.
        agent_notify.admit(args.conf, args.env, args.args, att.container_id,
                           [str(ip.address.ip) for ip in result.ips], args.stderr, plugin)
        return result


@contextlib.contextmanager
def locked(args: skel.CmdArgs, att: Attachment | None = None) -> Iterator[Held]:
    """The network's lock shared, then the attachment's (:mod:`podnet.plugins.attachment_lock`),
    for ADD, DEL and CHECK. Always in that order, so no two calls can wait on each other."""
    att = att or Attachment.of(args)
    with (network_lock(args.env, att.network, exclusive=False),
          attachment_lock(args.env, att.network, att.container_id, att.ifname) as held):
        yield held


def enable_forwarding(host: Netlink, families: Iterable[int]) -> None:
    for family in sorted(set(families)):
        key = _FORWARDING[family]
        # Written only when off: writing ip_forward resets every interface's forwarding flag.
        if host.sysctl(key) != "1":
            host.set_sysctl(key, 1)


def ipam_configured(conf: dict[str, Any]) -> bool:
    """An ``ipam`` section with a type: what DEL and GC delegate to, whatever else it holds."""
    ipam = conf.get("ipam")
    return isinstance(ipam, dict) and isinstance(ipam.get("type"), str) and bool(ipam["type"])


# ---- DEL and GC --------------------------------------------------------------------------------

# Removes the plugin's nftables elements whose owner string the predicate accepts.
RemoveElements = Callable[[Callable[[str], bool]], None]


def delete(args: skel.CmdArgs, remove_elements: RemoveElements | None = None) -> None:
    """Idempotent, and needs neither the pod's namespace nor prevResult. The address is released
    last: it is never free while a veth routes to it or an nftables element names it."""
    att = Attachment.of(args)
    with locked(args, att) as lock:
        if remove_elements is not None:
            remove_elements(att.owner.__eq__)
        with Netlink() as host:
            veth.delete_host_side(host, att.host_name, args.netns)
        if ipam_configured(args.conf):
            ipam_delegate.ipam_del(args)
        agent_notify.release(args.conf, args.env, att.container_id)
        lock.forget()


@dataclass(frozen=True)
class Kept:
    """What GC keeps of one network, as veth names and nftables owner strings."""

    network: str
    valid: ValidAttachments
    names: frozenset[str]
    owners: frozenset[str]

    @classmethod
    def of(cls, network: str, valid: ValidAttachments, veths: Sequence[Link]) -> Kept:
        # A container listed without ifname keeps each of its interfaces; which names those have,
        # the veths' aliases tell (eth0 and the listed names cover a veth whose ADD died before
        # its alias was set). Identity is then checked by recomputing the veth's name.
        ifnames = {alias_ifname(link.alias) for link in veths if link.alias}
        ifnames |= {ifname for _, ifname in valid.exact} | {"eth0"}
        pairs = set(valid.exact) | {(cid, ifname) for cid in valid.whole for ifname in ifnames}
        return cls(network, valid, frozenset(host_veth_name(network, c, i) for c, i in pairs),
                   frozenset(owner(network, c, i) for c, i in pairs))

    def stale_owner(self, comment: str) -> bool:
        """An element of this network's attachment that is not kept (other networks': never)."""
        prefix = network_token(self.network) + "/"
        if not comment.startswith(prefix):
            return False
        rest = comment[len(prefix):]
        if rest.startswith("#"):  # a hashed owner: only the recomputed strings can claim it
            return comment not in self.owners
        container_id, _, ifname = rest.partition("/")
        return not self.valid.keeps(container_id, ifname)


def gc(args: skel.CmdArgs, remove_elements: RemoveElements | None = None) -> None:
    """Remove this network's attachments that GC's valid list does not keep: nftables elements,
    then veths, then IPAM releases their addresses."""
    network = Attachment.of(args).network
    with network_lock(args.env, network, exclusive=True):
        _collect(args, network, remove_elements)
    sweep(args.env)


def _collect(args: skel.CmdArgs, network: str, remove_elements: RemoveElements | None) -> None:
    with Netlink() as host:
        veths = veth.network_veths(host, network)
        kept = Kept.of(network, args.attachments_to_keep, veths)
        if remove_elements is not None:
            remove_elements(kept.stale_owner)
        for link in veths:
            if link.name not in kept.names:
                veth.delete_host_side(host, link.name)
    if ipam_configured(args.conf):
        ipam_delegate.ipam_gc(args)
