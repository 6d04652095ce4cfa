"""DEL through the daemon with the caller's namespace as a descriptor: the host side waits for the
pod end through that descriptor, never by looking the caller's path up in the daemon's mount
namespace (where it may not exist). No root needed: any process may open its own namespace."""

from __future__ import annotations

import os

from podnet.daemon.netns_fd import CallerNetns
from podnet.kernel.netns import NetnsHandle
from podnet.kernel.unregister import open_netns


def test_a_callers_namespace_is_used_as_sent_not_looked_up_by_path() -> None:
    with NetnsHandle.open("/proc/self/ns/net") as own:
        sent = CallerNetns("/run/netns/only-in-the-callers-mount-namespace", os.dup(own.fd))
        try:
            got = open_netns(sent)
            assert got is not None, "the descriptor the caller sent was ignored"
            try:
                assert got.identity() == own.identity()
            finally:
                got.close()
            assert not sent.closed  # the caller's handle stays the skel's to close
        finally:
            sent.close()
