"""``podnet policy explain SRC DST PORT/PROTO``: the verdict of the semantics, said in words.

Endpoints are ``namespace/name`` or an address; the port is ``80``, ``80/TCP``, ``53/udp``.
Anything else is an :class:`ExplainError` that names what is wrong.
"""

from __future__ import annotations

from ipaddress import ip_address

from podnet.agent.model import Direction, IPAddress, Pod, Protocol
from podnet.agent.policy.inputs import PolicyInputs
from podnet.agent.policy.semantics import EndpointError, Half, Verdict, verdict


class ExplainError(ValueError):
    """An endpoint or port that cannot be understood or found."""


def parse_endpoint(inputs: PolicyInputs, text: str) -> Pod | IPAddress:
    try:
        return ip_address(text)
    except ValueError:
        pass
    namespace, slash, name = text.partition("/")
    if not slash or not namespace or not name or "/" in name:
        raise ExplainError(f"{text!r} is neither an IP address nor namespace/name")
    pod = next((p for p in inputs.pods if p.key == (namespace, name)), None)
    if pod is None:
        raise ExplainError(f"no pod {text} in the model")
    return pod


def parse_port(text: str) -> tuple[int, Protocol]:
    number, _, proto = text.partition("/")
    try:
        protocol = Protocol(proto.upper()) if proto else Protocol.TCP
    except ValueError:
        raise ExplainError(f"protocol {proto!r} is not TCP, UDP or SCTP") from None
    if not number.isdigit() or not 1 <= int(number) <= 65535:
        raise ExplainError(f"port {number!r} is not a number from 1 to 65535")
    return int(number), protocol


def explain(inputs: PolicyInputs, src: str, dst: str, port: str, family: int | None = None) -> str:
    number, protocol = parse_port(port)
    try:
        result = verdict(inputs, parse_endpoint(inputs, src), parse_endpoint(inputs, dst), number, protocol,
                         family=family)
    except EndpointError as err:
        raise ExplainError(str(err)) from None
    return describe(inputs, result)


def describe(inputs: PolicyInputs, result: Verdict) -> str:
    src, dst = _name(inputs, result.src_ip), _name(inputs, result.dst_ip)
    head = (f"{src} -> {dst} {result.protocol.value}/{result.port}: "
            f"{'ALLOWED' if result.allowed else 'DENIED'}")
    if result.loopback:
        return f"{head}\n  a pod's traffic to itself never leaves it"
    return "\n".join([head, _half(result.egress, src), _half(result.ingress, dst)])


def _name(inputs: PolicyInputs, ip: IPAddress) -> str:
    pod = inputs.pod_by_ip(ip)
    return f"{pod.namespace}/{pod.name} ({ip})" if pod is not None else str(ip)


def _half(half: Half, who: str) -> str:
    side = "egress" if half.direction is Direction.EGRESS else "ingress"
    if not half.isolated:
        return f"  {side} of {who}: not isolated (no policy selects it for {side})"
    by = ", ".join(f"{ns}/{name}" for ns, name in half.selected_by)
    outcome = f"allowed by {half.allowed_by}" if half.allowed_by else "no rule allows it"
    return f"  {side} of {who}: isolated by {by}; {outcome}"
