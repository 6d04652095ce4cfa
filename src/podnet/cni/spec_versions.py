"""The CNI spec versions podnet speaks: the one definition, importing nothing.

The shims answer VERSION from here on every container start and stop (podman asks every network in
its config dir), so this module must stay free of imports: even ``re`` and ``typing`` cost more
than the rest of that answer. :mod:`podnet.cni.version` re-exports these names.
"""

CURRENT = "1.1.0"
SUPPORTED: tuple[str, ...] = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
# A config without cniVersion is a pre-0.2 config (libcni treats it the same way).
IMPLICIT = "0.1.0"


def version_json(supported: tuple[str, ...] = SUPPORTED) -> str:
    """The VERSION body as JSON text (what ``json.dumps(version_info())`` prints), without json."""
    listed = ", ".join(f'"{v}"' for v in supported)
    return f'{{"cniVersion": "{CURRENT}", "supportedVersions": [{listed}]}}'
