"""The ``podnet`` command. Subcommands import their modules lazily so ``podnet --help`` is instant."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

DESCRIPTION = """\
podnet: pod networking for a Kubernetes node, in Python.

  podnet cni add|del|check|status|gc NETWORK [NETNS]
      Attach a network namespace to a CNI network, detach it, check it, ask the network's
      plugins whether they are ready, or garbage-collect attachments (like cnitool).
  podnet daemon [--socket PATH] [--metrics-addr HOST:PORT]
      Run the node daemon: plugin shims hand it their calls over a root-only unix socket.
  podnet agent (--manifests DIR | --kubeconfig PATH | --in-cluster) [--pod-cidr CIDR]
      Run the node agent: NetworkPolicy for this node's pods, in nftables.
  podnet status
      The agent's and the daemon's state: sync, objects, last error, drift repairs.
  podnet policy explain SRC DST PORT/PROTO
      Which policies select each side and which rule allows the traffic, or that none does.
  podnet install [--bin-dir DIR] [--conf-dir DIR]
      Install the plugin shims into a CNI bin dir and a network config into a CNI conf dir.
  podnet doctor [--fix] [--json] [--netns NAME] [--conf-dir DIR] [--cache-dir DIR]
      Find what crashes and udev leave behind on this node (torn cache files, orphaned IP
      reservations and nftables elements, MAC drift) and, with --fix, repair what is safe.
  podnet demo [--single-node]
      Build a three-node cluster in throw-away namespaces on this machine, with pods on every
      node: the ping matrix across nodes, a Service, the TCP matrix before and with a
      NetworkPolicy; then remove everything again.

Run 'podnet SUBCOMMAND --help' for the options of each.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podnet", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    from podnet.cli import agent_cmd, cni_cmd, daemon_cmd, demo_cmd, doctor_cmd, install_cmd

    cni_cmd.register(sub)
    agent_cmd.register(sub)
    demo_cmd.register(sub)
    daemon_cmd.register(sub)
    install_cmd.register(sub)
    doctor_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not getattr(ns, "func", None):
        parser.print_help()
        sys.exit(2)
    sys.exit(ns.func(ns))


if __name__ == "__main__":
    main()
