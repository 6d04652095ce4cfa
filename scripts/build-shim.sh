#!/usr/bin/env bash
# Builds the native plugin shim into the venv from source and makes the plugin executables there
# links to it, with the Python shims next to it (podnet-py-NAME: the native shim's in-process
# fallback, and what PODNET_SHIM=python runs). `podnet install` does the work, so make and a node
# install build it the same way (the wire format's constants come from protocol.py). Idempotent:
# nothing changes when nothing changed. Without a C compiler the Python shims are the plugins.
# Usage: build-shim.sh VENV
set -euo pipefail
venv=$1
"$venv/bin/podnet" install --bin-dir "$venv/bin" --no-conflist | { grep -v '^unchanged' || true; }
