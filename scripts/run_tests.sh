#!/usr/bin/env bash
# The test command: sets this checkout up from nothing (a no-op when already set up), then
# runs the test suite. Extra arguments go to pytest (e.g. -k buffer).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup_env.sh"
# shellcheck disable=SC1091
. "$ROOT/scripts/env.sh"
cd "$ROOT"
# No model hub here or in CI: every model the tests use is built in code and saved locally.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# DDS stays on this machine; each test picks its own ROS_DOMAIN_ID.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
exec python -m pytest "$@"
