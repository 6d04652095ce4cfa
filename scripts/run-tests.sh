#!/usr/bin/env bash
# Runs lint, type checks and the whole pytest suite. pytest's exit code 5 (no tests ran)
# is a failure here: a suite that silently collects nothing must not pass.
set -uo pipefail
venv=.venv
"$venv/bin/ruff" check . || exit 1
"$venv/bin/mypy" || exit 1
"$venv/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "podnet: pytest collected no tests; failing on purpose" >&2
    exit 1
fi
exit "$rc"
