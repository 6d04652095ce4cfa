"""podnet doctor: find what podnet's founding failures leave on a live node, repair what is safe.

One module per kind of finding: :mod:`~podnet.doctor.cache_entries` (result cache and pending
markers), :mod:`~podnet.doctor.reservations` (host-local), :mod:`~podnet.doctor.macs` (random
MACs, gateway MAC drift), :mod:`~podnet.doctor.nft_elements` (podnet-bridge's nftables elements),
:mod:`~podnet.doctor.udev` (the link policy), :mod:`~podnet.doctor.dump_counters` (the daemon's
netlink dump counters). What makes an attachment *live* is defined in :mod:`~podnet.doctor.live`;
which networks and files are podnet's in :mod:`~podnet.doctor.scope`.
"""
