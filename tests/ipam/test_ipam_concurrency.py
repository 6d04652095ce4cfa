"""50 podnet-host-local processes allocate on one /24 at the same time: 50 distinct addresses; then
50 parallel DELs leave no reservation."""

from __future__ import annotations

from pathlib import Path

import pytest
from ipam_procs import PODNET_HOST_LOCAL, finish, host_local_conf, ip_files, start

PARALLEL = 50
NET = "busynet"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_parallel_adds_get_distinct_addresses_and_parallel_dels_release_all(tmp_path: Path) -> None:
    conf = host_local_conf(tmp_path, NET, [[{"subnet": "10.55.0.0/24"}], [{"subnet": "fd55::/64"}]])
    ids = [f"pod{i:02d}" for i in range(PARALLEL)]
    procs = [start(PODNET_HOST_LOCAL, "ADD", cid, conf) for cid in ids]
    outcomes = [finish(p) for p in procs]
    assert [o.rc for o in outcomes] == [0] * PARALLEL, [(o.out, o.err[-2000:]) for o in outcomes if o.rc]
    v4 = [o.addresses()[0] for o in outcomes]
    v6 = [o.addresses()[1] for o in outcomes]
    assert len(set(v4)) == PARALLEL and len(set(v6)) == PARALLEL
    files = ip_files(tmp_path, NET)
    assert len(files) == 2 * PARALLEL
    for cid, o in zip(ids, outcomes, strict=True):
        for address in o.addresses():
            assert files[address.split("/")[0]] == f"{cid}\r\neth0".encode()
    print(f"\nIPAM concurrency: {PARALLEL} parallel ADDs -> {len(set(v4))} distinct IPv4, "
          f"{len(set(v6))} distinct IPv6")

    dels = [finish(p) for p in [start(PODNET_HOST_LOCAL, "DEL", cid, conf) for cid in ids]]
    assert [o.rc for o in dels] == [0] * PARALLEL, [(o.out, o.err[-2000:]) for o in dels if o.rc]
    assert ip_files(tmp_path, NET) == {}
