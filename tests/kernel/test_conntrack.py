"""Conntrack entries listed and deleted through podnet's own ctnetlink code, in real namespaces.

A client namespace, a middle one that forwards and DNATs (its conntrack table is the one under
test) and a server namespace with two endpoint addresses, joined by veths::

    client 10.0.1.2 --- 10.0.1.1 middle 10.0.2.1 --- 10.0.2.10, 10.0.2.11 server
           fd00:1::2     fd00:1::1     fd00:2::1       fd00:2::10, fd00:2::11

The middle namespace DNATs a service address (10.96.0.10 / fd00:96::10) to one endpoint with
an nftables rule the test rewrites; the server echoes, naming the address that answered. The
kernel's own view (``/proc/net/nf_conntrack`` read inside the namespace) is the oracle.
"""

from __future__ import annotations

import contextlib
import ipaddress
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest
from pyroute2 import NFCTSocket

from nsutil import Netns, NetnsFactory
from podnet.kernel import (
    DUMP_STATS,
    DumpInterrupted,
    InvalidArgument,
    Snapshot,
    run_in_netns,
    socket_in_netns,
)
from podnet.kernel.conntrack import Conntrack, Flow, FlowFilter, delete_flows, list_flows
from podnet.kernel.conntrack_wire import parse_flow

UDP, TCP = 17, 6


@dataclass(frozen=True)
class Plan:
    """The addresses of one IP family in the lab."""

    family: int
    client: str
    vip: str
    ep1: str
    ep2: str
    vip_net: str

    def dnat(self, ep: str, port: int) -> str:
        return f"{ep}:{port}" if self.family == socket.AF_INET else f"[{ep}]:{port}"


V4 = Plan(socket.AF_INET, "10.0.1.2", "10.96.0.10", "10.0.2.10", "10.0.2.11", "10.96.0.0/16")
V6 = Plan(socket.AF_INET6, "fd00:1::2", "fd00:96::10", "fd00:2::10", "fd00:2::11", "fd00:96::/64")
UDP_PORT, TCP_PORT, EP_UDP, EP_TCP = 53, 80, 5353, 8080
MARK = 42


class Echo:
    """Echo servers in the server namespace: UDP on each endpoint address, TCP on any; every
    answer is the address that answered, so the client sees which endpoint DNAT chose."""

    def __init__(self, ns: Netns, addresses: list[str]) -> None:
        self.sel = selectors.DefaultSelector()
        self.stopping = False
        self.socks: list[socket.socket] = []
        for ip in addresses:
            fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
            udp = socket_in_netns(ns.path, fam, socket.SOCK_DGRAM)
            udp.bind((ip, EP_UDP))
            self._add(udp, "udp")
        tcp = socket_in_netns(ns.path, socket.AF_INET6, socket.SOCK_STREAM)
        tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        tcp.bind(("::", EP_TCP))
        tcp.listen(64)
        self._add(tcp, "listen")
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _add(self, sock: socket.socket, kind: str) -> None:
        sock.setblocking(False)
        self.socks.append(sock)
        self.sel.register(sock, selectors.EVENT_READ, kind)

    def _serve(self) -> None:
        while not self.stopping:
            for key, _ in self.sel.select(0.05):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                with contextlib.suppress(OSError):
                    self._handle(sock, key.data)

    def _handle(self, sock: socket.socket, kind: str) -> None:
        if kind == "udp":
            _data, peer = sock.recvfrom(2048)
            sock.sendto(_plain(sock.getsockname()[0]).encode(), peer)
        elif kind == "listen":
            conn, _ = sock.accept()
            self._add(conn, "tcp")
        elif not sock.recv(2048):
            self.sel.unregister(sock)
            sock.close()
        else:
            sock.sendall(_plain(sock.getsockname()[0]).encode())

    def close(self) -> None:
        self.stopping = True
        self.thread.join(timeout=5)
        for sock in self.socks:
            sock.close()


def _plain(ip: str) -> str:
    """An address without the IPv4-mapped prefix a dual-stack socket reports."""
    return ip.removeprefix("::ffff:")


@dataclass
class Lab:
    client: Netns
    middle: Netns
    server: Netns

    def nat(self, udp: dict[Plan, str | None], tcp: dict[Plan, str]) -> None:
        """Replace the middle's DNAT rules: service UDP/TCP port -> the endpoint given."""
        rules = [f"udp dport {UDP_PORT} ct mark set {MARK}"]  # so that a mark is there to decode
        for plan, ep in udp.items():
            if ep is not None:
                ip = "ip" if plan.family == socket.AF_INET else "ip6"
                to = plan.dnat(ep, EP_UDP)
                rules.append(f"{ip} daddr {plan.vip} udp dport {UDP_PORT} dnat {ip} to {to}")
        for plan, ep in tcp.items():
            ip = "ip" if plan.family == socket.AF_INET else "ip6"
            rules.append(f"{ip} daddr {plan.vip} tcp dport {TCP_PORT} dnat {ip} to {plan.dnat(ep, EP_TCP)}")
        body = "\n".join(f"    {r}" for r in rules)
        script = ("table inet lab {}\ndelete table inet lab\n"
                  "table inet lab {\n  chain pre {\n    type nat hook prerouting priority dstnat;\n"
                  f"{body}\n  }}\n}}\n")
        self.middle.run(["nft", "-f", "-"], input=script)

    def udp_client(self, plan: Plan, dst: str | None = None, port: int = UDP_PORT) -> socket.socket:
        sock = socket_in_netns(self.client.path, plan.family, socket.SOCK_DGRAM)
        sock.settimeout(2)
        sock.connect((dst or plan.vip, port))
        return sock

    def tcp_client(self, plan: Plan, dst: str | None = None, port: int = TCP_PORT) -> socket.socket:
        sock = socket_in_netns(self.client.path, plan.family, socket.SOCK_STREAM)
        sock.settimeout(2)
        sock.connect((dst or plan.vip, port))
        return sock

    def kernel_view(self) -> set[tuple[object, ...]]:
        """The middle's table as /proc/net/nf_conntrack shows it (inside the namespace)."""
        out = self.middle.run(["cat", "/proc/net/nf_conntrack"]).stdout
        return {_proc_entry(line) for line in out.splitlines() if line.strip()}


def ask(sock: socket.socket) -> str:
    """Send one datagram or segment; the name of the endpoint that answered."""
    sock.send(b"?")
    return sock.recv(2048).decode()


def _proc_entry(line: str) -> tuple[object, ...]:
    words = line.split()
    fields: dict[str, list[str]] = {}
    for word in words:
        name, sep, value = word.partition("=")
        if sep:
            fields.setdefault(name, []).append(value)
    family = socket.AF_INET if words[0] == "ipv4" else socket.AF_INET6
    src, dst = [str(ipaddress.ip_address(a)) for a in fields["src"]], [str(ipaddress.ip_address(a))
                                                                         for a in fields["dst"]]
    sport, dport = [int(p) for p in fields.get("sport", ["0", "0"])], [int(p) for p in
                                                                        fields.get("dport", ["0", "0"])]
    return (family, int(words[3]), src[0], dst[0], sport[0], dport[0], src[1], dst[1], sport[1], dport[1])


def pyroute2_view(family: int) -> set[tuple[int, int, int]]:
    """(id, status, mark) of each entry as pyroute2 decodes them (run inside the namespace)."""
    with NFCTSocket(nfgen_family=family) as oracle:
        return {(e.get_attr("CTA_ID"), e.get_attr("CTA_STATUS"), e.get_attr("CTA_MARK"))
                for e in oracle.dump()}


def _view(flow: Flow) -> tuple[object, ...]:
    return (flow.family, flow.protocol, flow.orig_src, flow.orig_dst, flow.orig_sport, flow.orig_dport,
            flow.reply_src, flow.reply_dst, flow.reply_sport, flow.reply_dport)


@pytest.fixture
def lab(netns: NetnsFactory) -> Iterator[Lab]:
    client, middle, server = netns("ctc"), netns("ctm"), netns("cts")
    # Set before the links exist: no duplicate address detection (link-local addresses would be
    # tentative for a second), and forwarding from the start.
    for ns in (client, middle, server):
        ns.run(["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0"])
    middle.run(["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
    macs = {"m0": "02:00:00:00:01:01", "c0": "02:00:00:00:01:02", "m1": "02:00:00:00:02:01",
            "s0": "02:00:00:00:02:02"}
    for here, there, ns in (("m0", "c0", client), ("m1", "s0", server)):
        middle.run(["ip", "link", "add", here, "address", macs[here], "type", "veth", "peer", "name", there,
                    "address", macs[there], "netns", ns.name])
    # IPv6 neighbours are set by hand: the first neighbour solicitation on a fresh link is often
    # lost, and its retry costs a second per test.
    ip_batch(client, ["addr add 10.0.1.2/24 dev c0", "addr add fd00:1::2/64 dev c0 nodad",
                      "link set c0 up", "route add default via 10.0.1.1",
                      "route add default via fd00:1::1",
                      f"neigh add fd00:1::1 lladdr {macs['m0']} dev c0 nud permanent"])
    ip_batch(middle, ["addr add 10.0.1.1/24 dev m0", "addr add fd00:1::1/64 dev m0 nodad",
                      "addr add 10.0.2.1/24 dev m1", "addr add fd00:2::1/64 dev m1 nodad",
                      "link set m0 up", "link set m1 up",
                      # Unmatched service traffic leaves towards the server (as it would leave a node
                      # by its default route): its entry is confirmed, and then stale once DNAT starts.
                      f"route add {V4.vip_net} via {V4.ep1}", f"route add {V6.vip_net} via {V6.ep1}",
                      f"neigh add fd00:1::2 lladdr {macs['c0']} dev m0 nud permanent",
                      f"neigh add {V6.ep1} lladdr {macs['s0']} dev m1 nud permanent",
                      f"neigh add {V6.ep2} lladdr {macs['s0']} dev m1 nud permanent"])
    ip_batch(server, [f"addr add {V4.ep1}/24 dev s0", f"addr add {V4.ep2}/24 dev s0",
                      f"addr add {V6.ep1}/64 dev s0 nodad", f"addr add {V6.ep2}/64 dev s0 nodad",
                      "link set s0 up", "route add default via 10.0.2.1",
                      "route add default via fd00:2::1",
                      f"neigh add fd00:2::1 lladdr {macs['m1']} dev s0 nud permanent"])
    echo = Echo(server, [V4.ep1, V4.ep2, V6.ep1, V6.ep2])
    try:
        yield Lab(client, middle, server)
    finally:
        echo.close()


def ip_batch(ns: Netns, commands: list[str]) -> None:
    ns.run(["ip", "-batch", "-"], input="".join(c + "\n" for c in commands))


FAMILIES = pytest.mark.parametrize("plan", [V4, V6], ids=["ipv4", "ipv6"])


@pytest.mark.root
@FAMILIES
def test_lists_the_entries_the_kernel_shows(lab: Lab, plan: Plan) -> None:
    lab.nat({plan: plan.ep1}, {plan: plan.ep1})
    udp = [lab.udp_client(plan) for _ in range(3)]
    assert {ask(s) for s in udp} == {plan.ep1}
    tcp = lab.tcp_client(plan)
    assert ask(tcp) == plan.ep1
    with Conntrack(lab.middle.path) as table:
        flows = table.list_flows(family=plan.family)
        assert flows.consistent
        assert {_view(f) for f in flows} == {e for e in lab.kernel_view() if e[0] == plan.family}
        decoded = run_in_netns(lab.middle.path, pyroute2_view, plan.family)
        assert {(f.id, f.status, f.mark) for f in flows} == decoded
        mine = table.list_flows(family=plan.family, protocol="udp", reply_src=plan.ep1)
        assert table.kernel_filter and table.scanned == 3, "the kernel did not filter the dump"
    assert len(mine) == 3
    ports = {s.getsockname()[1] for s in udp}
    for flow in mine:
        assert (flow.orig_src, flow.orig_dst, flow.orig_dport) == (plan.client, plan.vip, UDP_PORT)
        assert (flow.reply_src, flow.reply_dst, flow.reply_sport) == (plan.ep1, plan.client, EP_UDP)
        assert flow.orig_sport in ports and flow.reply_dport == flow.orig_sport and flow.mark == MARK
    tcp_flows = list_flows(lab.middle.path, protocol=TCP, orig_dst=plan.vip)
    assert [(f.reply_src, f.reply_sport) for f in tcp_flows] == [(plan.ep1, EP_TCP)]
    assert tcp_flows[0].status & 0x8, "an established TCP entry is ASSURED (IPS_ASSURED)"
    for s in [*udp, tcp]:
        s.close()


@pytest.mark.root
@FAMILIES
def test_deleting_by_reply_source_moves_udp_clients_and_keeps_tcp(lab: Lab, plan: Plan) -> None:
    lab.nat({plan: plan.ep1}, {plan: plan.ep1})
    udp, other_udp = lab.udp_client(plan), lab.udp_client(plan, plan.ep2, EP_UDP)
    tcp_same, tcp_other = lab.tcp_client(plan), lab.tcp_client(plan, plan.ep2, EP_TCP)
    answers = (ask(udp), ask(other_udp), ask(tcp_same), ask(tcp_other))
    assert answers == (plan.ep1, plan.ep2, plan.ep1, plan.ep2)
    with Conntrack(lab.middle.path) as table:
        tcp_before = {f.id: f for f in table.list_flows(protocol="tcp")}
        assert len(tcp_before) == 2
        # The endpoint goes away: the rule now picks ep2, but the client's entry still says ep1.
        lab.nat({plan: plan.ep2}, {plan: plan.ep1})
        assert ask(udp) == plan.ep1, "precondition: a stale UDP entry keeps the client on ep1"
        deleted = table.delete_flows(protocol="udp", reply_src=plan.ep1, reply_sport=EP_UDP)
        assert deleted == 1
        assert list(table.list_flows(protocol="udp", reply_src=plan.ep1)) == []
        assert ask(udp) == plan.ep2, "the next datagram made a new entry, DNATed to the live endpoint"
        now = table.list_flows(protocol="udp", orig_dst=plan.vip)
        assert [(f.reply_src, f.reply_sport) for f in now] == [(plan.ep2, EP_UDP)]
        assert table.delete_flows(protocol="udp", reply_src=plan.ep1) == 0
        tcp_after = {f.id: f for f in table.list_flows(protocol="tcp")}
        assert tcp_after.keys() == tcp_before.keys()
        assert len(table.list_flows(protocol="udp", orig_dst=plan.ep2, orig_dport=EP_UDP)) == 1
    assert (ask(tcp_same), ask(tcp_other), ask(other_udp)) == (plan.ep1, plan.ep2, plan.ep2)
    for s in (udp, other_udp, tcp_same, tcp_other):
        s.close()


@pytest.mark.root
@FAMILIES
def test_deleting_by_original_destination_when_a_service_gets_endpoints(lab: Lab, plan: Plan) -> None:
    lab.nat({}, {plan: plan.ep1})
    udp = lab.udp_client(plan)
    tcp = lab.tcp_client(plan)
    udp.send(b"?")  # no endpoints yet: forwarded un-NATed, unanswered, but its entry is made
    with Conntrack(lab.middle.path) as table:
        stale = wait_for(lambda: table.list_flows(protocol="udp", orig_dst=plan.vip, orig_dport=UDP_PORT))
        assert [(f.reply_src, f.reply_sport) for f in stale] == [(plan.vip, UDP_PORT)]
        if plan is V4:  # the kernel filtered by original destination (IPv6 addresses: see conntrack_wire)
            assert list(table.list_flows(family=4, protocol="udp", orig_dst=plan.vip)) == stale
            assert table.scanned == 1
        lab.nat({plan: plan.ep1}, {plan: plan.ep1})
        udp.settimeout(0.3)
        with pytest.raises(TimeoutError):
            ask(udp)  # precondition: the entry made before the rule keeps the client un-NATed
        assert delete_flows(lab.middle.path, protocol="udp", orig_dst=plan.vip, orig_dport=UDP_PORT) == 1
        udp.settimeout(2)
        assert ask(udp) == plan.ep1
        tcp_flows = table.list_flows(protocol="tcp", orig_dst=plan.vip)
    assert len(tcp_flows) == 1 and ask(tcp) == plan.ep1
    udp.close()
    tcp.close()


@pytest.mark.root
@FAMILIES
def test_a_stale_entry_listed_before_never_deletes_the_new_one(lab: Lab, plan: Plan) -> None:
    """The proxy's race: it listed the entry to a dead endpoint, the entry went (deleted, or timed
    out) and the client's next datagram made a new one to the live endpoint, with the same
    original tuple. Deleting what was listed must not delete the new entry."""
    lab.nat({plan: plan.ep1}, {plan: plan.ep1})
    udp = lab.udp_client(plan)
    assert ask(udp) == plan.ep1
    assert lab.client.ping(plan.ep2)
    with Conntrack(lab.middle.path) as table:
        [old] = table.list_flows(protocol="udp", orig_dst=plan.vip)
        lab.nat({plan: plan.ep2}, {plan: plan.ep1})
        assert table.delete(old)
        assert ask(udp) == plan.ep2
        [new] = table.list_flows(protocol="udp", orig_dst=plan.vip)
        # Same original tuple; the id is often the same too (the kernel reused the memory).
        assert (new.orig_sport, new.reply_src, old.reply_src) == (old.orig_sport, plan.ep2, plan.ep1)
        assert not table.delete(old), "the new entry was deleted in the old one's name"
        assert [f.reply_src for f in table.list_flows(protocol="udp", orig_dst=plan.vip)] == [plan.ep2]
        # Any protocol's tuple goes back as the kernel gave it: ICMP ids and types included.
        icmp = "icmp" if plan is V4 else "icmpv6"
        assert len(table.list_flows(protocol=icmp, orig_dst=plan.ep2)) == 1
        assert table.delete_flows(protocol=icmp, orig_dst=plan.ep2) == 1
        assert list(table.list_flows(protocol=icmp, orig_dst=plan.ep2)) == []
    udp.close()


def wait_for(probe: Callable[[], Sequence[Flow]], want: int = 1, timeout: float = 2.0) -> list[Flow]:
    """The probe's answer once it has ``want`` entries (packets are still on their way)."""
    deadline = time.monotonic() + timeout
    while True:
        found = list(probe())
        if len(found) >= want or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


STABLE, STABLE_PORT, CHURN_PORT, WINDOW = 1500, 7000, 7001, 300
# Run inside the middle namespace: each step sends a datagram from a new socket (a new entry,
# made by the middle's own output) and deletes the entry made WINDOW steps earlier over raw
# ctnetlink, so entries come and go all the time, some in hash buckets a dump has passed and
# some ahead of it. Standalone (struct and socket only) so the writer does not use the code
# under test. Runs until killed (by PID) or for 20 s.
CHURN = f"""
import collections, socket, struct, time
NLA, HDR = struct.Struct("=HH"), struct.Struct("=IHHII")
def nla(t, p):
    raw = NLA.pack(4 + len(p), t) + p
    return raw + bytes(-len(raw) % 4)
nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
nl.bind((0, 0))
nl.setblocking(False)
ips = nla(1, socket.inet_aton("{V4.ep1.rsplit('.', 1)[0]}.1")) + nla(2, socket.inet_aton("{V4.ep2}"))
def delete(sport, seq):
    ports = nla(1, bytes([17])) + nla(2, struct.pack("!H", sport)) + nla(3, struct.pack("!H", {CHURN_PORT}))
    body = struct.pack("=BBH", 2, 0, 0) + nla(0x8001, nla(0x8001, ips) + nla(0x8002, ports))
    nl.send(HDR.pack(16 + len(body), (1 << 8) | 2, 1, seq, 0) + body)
    try:
        while True:
            nl.recv(65536)  # errors (ENOENT when an entry was reused) are not interesting
    except (BlockingIOError, OSError):
        pass
window = collections.deque()
print("churning", flush=True)
end, seq = time.monotonic() + 20, 0
while time.monotonic() < end:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", ("{V4.ep2}", {CHURN_PORT}))
    window.append(s.getsockname()[1])
    s.close()
    if len(window) > {WINDOW}:
        seq += 1
        delete(window.popleft(), seq)
"""


@pytest.mark.root
def test_dumps_under_churn_hold_every_stable_entry_once(lab: Lab) -> None:
    """Entries are made and deleted by the thousand while the table is dumped (in many parts):
    every dump returned holds each entry that existed throughout exactly once (or is refused
    with DumpInterrupted, never returned torn); a filtered question, the proxy's kind, is
    answered exactly throughout."""
    lab.nat({}, {V4: V4.ep1})  # conntrack runs in a namespace only while a rule needs it (dnat)
    stable = []
    for i in range(STABLE):
        s = socket_in_netns(lab.client.path, socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((V4.client, 20000 + i))
        s.sendto(b"x", (V4.ep1, STABLE_PORT))
        stable.append(s)
    wanted = {(V4.client, 20000 + i) for i in range(STABLE)}
    with Conntrack(lab.middle.path) as table:
        before = wait_for(lambda: table.list_flows(protocol="udp", orig_dport=STABLE_PORT), want=STABLE)
        assert {(f.orig_src, f.orig_sport) for f in before} == wanted
        churn = lab.middle.popen([sys.executable, "-c", CHURN], stdout=subprocess.PIPE)
        assert churn.stdout is not None and churn.stdout.readline().strip() == b"churning"
        time.sleep(0.1)  # the window fills
        DUMP_STATS.reset()
        whole = refused = 0
        churned: set[int] = set()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                flows = table.list_flows()
            except DumpInterrupted:
                refused += 1
            else:
                seen = [(f.orig_src, f.orig_sport) for f in flows if f.orig_dport == STABLE_PORT]
                assert len(seen) == len(set(seen)) and set(seen) == wanted, "a torn dump was returned"
                churned.update(f.id for f in flows if f.orig_dport == CHURN_PORT)
                whole += 1
            one = table.list_flows(family=4, protocol="udp", orig_dport=STABLE_PORT, orig_sport=20007)
            assert [(f.orig_src, f.orig_sport) for f in one] == [(V4.client, 20007)] and table.scanned == 1
        assert churn.poll() is None, "the churn writer ended before the dumps did"
    print(f"dumps whole={whole} refused={refused} churn entries seen={len(churned)} {DUMP_STATS.as_dict()}")
    assert whole >= 3, "too few dumps came back whole to say anything"
    assert len(churned) > 3 * WINDOW, "the entries did not change while the table was dumped"
    for s in stable:
        s.close()


class _Fake(Conntrack):
    """A Conntrack whose kernel answers are scripted (no race or old kernel needed); an exception
    in the script is raised instead of answering."""

    def __init__(self, answers: list[list[Flow] | Exception]) -> None:
        super().__init__()
        self.answers = answers

    def _dump_once(self, flt: FlowFilter, best_effort: bool) -> Snapshot[Flow]:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return Snapshot(answer, 1, True)


def test_a_dump_that_names_an_entry_twice_is_repeated_then_refused() -> None:
    a = Flow(socket.AF_INET, UDP, "10.0.0.1", "10.0.0.2", 1, 2, "10.0.0.2", "10.0.0.1", 2, 1, id=7)
    b = Flow(socket.AF_INET, UDP, "10.0.0.1", "10.0.0.2", 3, 2, "10.0.0.2", "10.0.0.1", 2, 3, id=8)
    with _Fake([[a, b, a], [a, b]]) as table:
        assert list(table.list_flows()) == [a, b]
    with _Fake([[a, a], [b, b], [a, b, b]]) as table, pytest.raises(DumpInterrupted, match="twice"):
        table.list_flows()
    with _Fake([[a, a], [b, b], [a, b, b]]) as table:
        assert not table.list_flows(best_effort=True).consistent


def test_a_kernel_without_cta_filter_is_asked_again_unfiltered() -> None:
    a = Flow(socket.AF_INET, UDP, "10.0.0.1", "10.0.0.2", 1, 53, "10.0.0.2", "10.0.0.1", 53, 1)
    b = Flow(socket.AF_INET, UDP, "10.0.0.1", "10.0.0.3", 1, 53, "10.0.0.3", "10.0.0.1", 53, 1)
    with _Fake([InvalidArgument("dump of conntrack entries: invalid argument"), [a, b]]) as table:
        assert list(table.list_flows(family=4, protocol="udp", orig_dst="10.0.0.2")) == [a]
        assert not table.kernel_filter and table.scanned == 2
    # A request that carried no filter is not retried: the error was about something else.
    with _Fake([InvalidArgument("dump of conntrack entries: invalid argument")]) as table, \
            pytest.raises(InvalidArgument):
        table.list_flows(orig_dst="10.0.0.2")


@pytest.mark.root
def test_bad_filters_are_refused_with_a_clear_error(lab: Lab) -> None:
    with Conntrack(lab.middle.path) as table:
        with pytest.raises(InvalidArgument, match="empty filter"):
            table.delete_flows()
        with pytest.raises(InvalidArgument, match="unknown field"):
            table.list_flows(dst="10.0.0.1")


def test_filter_values_are_checked() -> None:
    assert FlowFilter.of(protocol="UDP", orig_dst="fd00::0:1") == FlowFilter(
        family=socket.AF_INET6, protocol=UDP, orig_dst="fd00::1")
    with pytest.raises(InvalidArgument, match="orig_dst: not an IP address"):
        FlowFilter.of(orig_dst="10.0.0.300")
    with pytest.raises(InvalidArgument, match="address family differs"):
        FlowFilter.of(orig_dst="10.0.0.1", reply_src="fd00::1")
    with pytest.raises(InvalidArgument, match="reply_sport: not a port"):
        FlowFilter.of(reply_sport=70000)
    with pytest.raises(InvalidArgument, match="protocol: unknown name"):
        FlowFilter.of(protocol="quic")
    with pytest.raises(InvalidArgument, match="family"):
        FlowFilter.of(family=5)
    with pytest.raises(InvalidArgument, match="protocol without ports"):
        FlowFilter.of(protocol="icmp", orig_dport=1)


def test_a_message_without_tuples_is_skipped() -> None:
    assert parse_flow(b"\x02\x00\x00\x00", 0, 4) is None

