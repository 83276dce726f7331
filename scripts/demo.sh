#!/usr/bin/env bash
# The main job: a simulated rack failure (40 of 200 hosts lose power) on virtual time.
# Needs only the core install (no server, no compiler): scripts/setup.sh demo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh demo
exec .venv/bin/cloudha simulate examples/scenarios/rack-failure.toml "$@"
