"""podnet.kernel: the only code that reads or writes kernel networking state.

Public surface (import from here)::

    from podnet.kernel import Netlink, NetnsHandle, run_in_netns, DumpInterrupted, ...

* :class:`Netlink` - a session bound to one network namespace: consistent dumps of
  links/addresses/routes/neighbours/rules, lookups, and the writes plugins need.
* :mod:`netns <podnet.kernel.netns>` - open a namespace by name or path without ever
  creating one, run a callable or open a socket inside it.
* :mod:`sysctl <podnet.kernel.sysctl>` - per-namespace sysctls.
* :mod:`dump <podnet.kernel.dump>` - the one consistent-dump function and its counters
  (``DUMP_STATS``) for metrics.
* :mod:`errors <podnet.kernel.errors>` - typed errors, all CNIError subclasses.
"""

from podnet.kernel.dump import DEFAULT_RETRY, RetryPolicy, Snapshot, consistent_dump
from podnet.kernel.dump import STATS as DUMP_STATS
from podnet.kernel.errors import (
    DumpInterrupted,
    Exists,
    InvalidArgument,
    KernelError,
    LinkNotFound,
    NetnsNotFound,
    NotFound,
    NotSupported,
    PermissionDenied,
)
from podnet.kernel.model import Address, Link, Neighbour, NextHop, Route, Rule
from podnet.kernel.netlink import LinkRef, Netlink, random_mac
from podnet.kernel.netns import (
    NetnsHandle,
    NetnsRef,
    entered,
    list_netns,
    netns_exists,
    netns_path,
    run_in_netns,
    socket_in_netns,
)
from podnet.kernel.sysctl import read_sysctl, sysctl_path, write_sysctl

__all__ = [
    "DEFAULT_RETRY",
    "DUMP_STATS",
    "Address",
    "DumpInterrupted",
    "Exists",
    "InvalidArgument",
    "KernelError",
    "Link",
    "LinkNotFound",
    "LinkRef",
    "Neighbour",
    "Netlink",
    "NetnsHandle",
    "NetnsNotFound",
    "NetnsRef",
    "NextHop",
    "NotFound",
    "NotSupported",
    "PermissionDenied",
    "RetryPolicy",
    "Route",
    "Rule",
    "Snapshot",
    "consistent_dump",
    "entered",
    "list_netns",
    "netns_exists",
    "netns_path",
    "random_mac",
    "read_sysctl",
    "run_in_netns",
    "socket_in_netns",
    "sysctl_path",
    "write_sysctl",
]
