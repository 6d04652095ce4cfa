"""Which networks doctor judges: those in the conf dir whose plugins are podnet's (``podnet-*``).

Only a network whose plugin list has podnet's veth plugin (``podnet-bridge`` or ``podnet-routed``)
has attachments doctor can tell live from dead (see :mod:`podnet.doctor.live`); for the other
podnet networks only damage that needs no liveness (an unreadable cache file) is judged. A
reservation directory is podnet's only when the veth plugin's ``ipam`` is ``podnet-host-local``
(``<dataDir>/<network>``); the nftables elements are podnet's only in ``podnet-bridge``'s tables
and under a configured network's owner prefix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from podnet.cni.config import NetConfList
from podnet.cni.errors import CNIError
from podnet.ipam.config import store_location
from podnet.runtime import confdir

VETH_PLUGINS = ("podnet-bridge", "podnet-routed")
PODNET_PREFIX = "podnet-"


class ScopeError(Exception):
    """The conf dir cannot be read at all: doctor cannot know which networks are podnet's."""


@dataclass(frozen=True)
class PodnetNetwork:
    name: str
    source: str
    veth_plugin: str | None  # podnet-bridge / podnet-routed: attachments have a host veth
    ipam_dir: str | None  # <dataDir>/<name> when that plugin's IPAM is podnet-host-local

    @property
    def judges_liveness(self) -> bool:
        return self.veth_plugin is not None

    @property
    def bridge(self) -> bool:
        return self.veth_plugin == "podnet-bridge"

    @property
    def routed(self) -> bool:
        return self.veth_plugin == "podnet-routed"


@dataclass
class Scope:
    conf_dir: str
    networks: list[PodnetNetwork] = field(default_factory=list)
    all_names: list[str] = field(default_factory=list)  # every network, podnet's or not
    notes: list[str] = field(default_factory=list)

    def network(self, name: str) -> PodnetNetwork | None:
        return next((n for n in self.networks if n.name == name), None)

    @property
    def judged(self) -> list[PodnetNetwork]:
        return [n for n in self.networks if n.judges_liveness]


def _ipam_dir(name: str, raw: dict[str, object]) -> str | None:
    ipam = raw.get("ipam")
    if not isinstance(ipam, dict) or ipam.get("type") != "podnet-host-local":
        return None
    data_dir, _ = store_location({**raw, "name": name})
    return os.path.join(data_dir, name)


def describe(conf: NetConfList) -> PodnetNetwork | None:
    """The network as doctor sees it, or None when none of its plugins is podnet's."""
    types = [p.type for p in conf.plugins]
    if not any(t.startswith(PODNET_PREFIX) for t in types):
        return None
    main = next((p for p in conf.plugins if p.type in VETH_PLUGINS), None)
    ipam_dir = _ipam_dir(conf.name, main.raw) if main is not None else None
    return PodnetNetwork(conf.name, conf.source, main.type if main is not None else None, ipam_dir)


def load_scope(conf_dir: str) -> Scope:
    directory = Path(conf_dir)
    if not directory.is_dir():
        raise ScopeError(f"config directory {conf_dir} does not exist (use --conf-dir)")
    scope = Scope(conf_dir, all_names=confdir.network_names(directory))
    for name in dict.fromkeys(scope.all_names):
        try:
            found = describe(confdir.load_network(directory, name))
        except CNIError as err:
            scope.notes.append(f"network {name}: config not usable, not judged: {err}")
            continue
        if found is not None:
            scope.networks.append(found)
    return scope
