#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need (venv, test packages, Debian chromium), then pytest.
# This is the README's test command and what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${ZIMAGE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements-test.txt
# The optional doors are tested too: Ray Serve replicas (serving = "ray") and the MCP server.
"$VENV/bin/python" -m pip install -q -r requirements-ray.txt -r requirements-mcp.txt

# Browser tests drive Debian's chromium through Playwright (Playwright's own browser download is not used).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing: run 'sudo apt-get install -y chromium' and try again" >&2
    exit 1
  fi
fi

set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$rc"
