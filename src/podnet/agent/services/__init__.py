"""The service proxy: Services and EndpointSlices compiled to the agent's nftables table (kube-proxy's
nftables mode in podnet's form), and what a sync means for conntrack."""

from podnet.agent.services.compile import programmed_endpoints
from podnet.agent.services.compiler import ServiceCompiler, compile
from podnet.agent.services.endpoints import Picked, Target, pick
from podnet.agent.services.names import OWNER, service_ips, service_ips_set
from podnet.agent.services.stale import EndpointKey, affected_endpoints

__all__ = ["OWNER", "EndpointKey", "Picked", "ServiceCompiler", "Target", "affected_endpoints", "compile",
           "pick", "programmed_endpoints", "service_ips", "service_ips_set"]
