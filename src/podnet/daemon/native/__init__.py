"""The native plugin shim (``podnet-shim.c``) and how it is built (:mod:`.build`)."""
