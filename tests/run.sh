#!/usr/bin/env bash
# Command two: install what the tests need (mosquitto, a venv, the package, the default model)
# and run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/bootstrap.sh --test
venv="${EDGELLM_VENV:-.venv}"
# Lint first: a style or type error fails fast, before the model downloads and minutes of tests.
"$venv/bin/ruff" check daemon tests bench
"$venv/bin/ruff" format --check daemon tests bench
"$venv/bin/mypy" daemon
"$venv/bin/edgellm" model fetch smollm2-135m
"$venv/bin/edgellm" model fetch gemma3-270m
# With the model fetched, a test that needs it must run, never skip.
export EDGELLM_REQUIRE_MODEL=1
exec "$venv/bin/python" -m pytest "$@"
