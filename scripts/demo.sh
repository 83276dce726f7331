#!/usr/bin/env bash
# The main job: a simulated rack failure (40 of 200 hosts lose power) on virtual time.
# Needs only the core install (no server, no compiler): scripts/setup.sh demo.
# Options go to `cloudha demo` (--json, --check; --real needs scripts/setup.sh test first).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh demo
exec .venv/bin/cloudha demo "$@"
