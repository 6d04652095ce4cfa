#!/usr/bin/env bash
# Creates the virtual environment (if needed) and installs podnet into it, editable.
# Usage: install-venv.sh PYTHON VENV TARGET   (TARGET is "." or ".[test]")
set -euo pipefail
python=$1 venv=$2 target=$3
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
# Skip pip when nothing changed since the last install: pip's resolver alone costs seconds.
stamp="$venv/.stamp-$(echo "$target" | tr -c 'a-z' '_')"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
    exit 0
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$target"
touch "$stamp"
