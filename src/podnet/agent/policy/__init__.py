"""NetworkPolicy: its meaning over a snapshot (``semantics``, for ``podnet policy explain`` and as
the tests' oracle) and its compilation to the agent's ``inet podnet`` table (``compile``)."""

from podnet.agent.policy.compile import compile, compile_inputs
from podnet.agent.policy.explain import ExplainError, explain
from podnet.agent.policy.inputs import PolicyInputs
from podnet.agent.policy.names import FAMILY, TABLE
from podnet.agent.policy.semantics import EndpointError, Half, Match, Verdict, allowed, verdict

__all__ = ["FAMILY", "TABLE", "EndpointError", "ExplainError", "Half", "Match", "PolicyInputs", "Verdict",
           "allowed", "compile", "compile_inputs", "explain", "verdict"]
