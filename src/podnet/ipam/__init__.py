"""podnet.ipam: host-local style address allocation (allocator, ``Store`` protocol, disk store,
in-memory fake) and the configuration of podnet-host-local and podnet-static."""

from podnet.ipam.allocator import AddressUnavailable, RangeExhausted, allocate, check, gc, release, usage
from podnet.ipam.config import HostLocalConfig, StaticAddress, StaticConfig, load_host_local, load_static
from podnet.ipam.disk_store import DiskStore
from podnet.ipam.fake_store import FakeStore
from podnet.ipam.ranges import Range, RangeSet
from podnet.ipam.store import Reservation, Store

__all__ = [
    "AddressUnavailable",
    "DiskStore",
    "FakeStore",
    "HostLocalConfig",
    "Range",
    "RangeExhausted",
    "RangeSet",
    "Reservation",
    "StaticAddress",
    "StaticConfig",
    "Store",
    "allocate",
    "check",
    "gc",
    "load_host_local",
    "load_static",
    "release",
    "usage",
]
