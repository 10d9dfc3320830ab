#!/usr/bin/env bash
# The long crash runs: the relay, distributor and extract crash tests with many more SIGKILLs than
# `make test` lands (8 each). Usage: bench/crash.sh [KILLS], default 100.
set -euo pipefail
cd "$(dirname "$0")/.."
ROD_CRASH_KILLS="${1:-100}" exec .venv/bin/python -m pytest tests/crash -s -q -p no:cacheprovider
