"""The only code that writes nftables: one :class:`~podnet.dataplane.writer.TableWriter` per table,
fed contributions by owner (:mod:`.contribution`), and the owned-element tables of CNI plugins
(:mod:`.plugin_elements`).

Nothing is imported here: a plugin run as a program imports only the modules it uses.
"""
