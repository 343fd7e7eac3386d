# Source this file (bash or zsh) to use the checkout: the venv, the built package, and the
# DDS settings the tools and tests use. Run scripts/setup_env.sh once before.
_steerseg_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
. "$_steerseg_root/.venv/bin/activate"
export AMENT_PREFIX_PATH=$VIRTUAL_ENV CMAKE_PREFIX_PATH=$VIRTUAL_ENV
# colcon's setup script puts install/ on PYTHONPATH, PATH, LD_LIBRARY_PATH and AMENT_PREFIX_PATH.
# It reads unset variables, so it cannot be sourced under `set -u` (scripts/run_tests.sh).
case $- in *u*) _steerseg_nounset=1; set +u ;; *) _steerseg_nounset= ;; esac
COLCON_TRACE= . "$_steerseg_root/install/setup.sh"
# The launch system and `ros2` command line that setup_env.sh built from source, where no ROS
# installation provides them.
if [ -f "$_steerseg_root/.ros2_launch/install/local_setup.sh" ]; then
  COLCON_TRACE= . "$_steerseg_root/.ros2_launch/install/local_setup.sh"
fi
# tf2 (Python) and the tf2_msgs and vision_msgs messages, built by setup_env.sh from source where
# no ROS installation provides them (target_frame and the vision_msgs outputs need them).
if [ -f "$_steerseg_root/.ros2_msgs/install/local_setup.sh" ]; then
  COLCON_TRACE= . "$_steerseg_root/.ros2_msgs/install/local_setup.sh"
fi
if [ -n "$_steerseg_nounset" ]; then set -u; fi
unset _steerseg_nounset
export PIP_CONSTRAINT=$_steerseg_root/requirements/constraints.txt
# The default Fast DDS shared-memory segment (512 KiB) is smaller than one camera frame.
export FASTDDS_DEFAULT_PROFILES_FILE=${FASTDDS_DEFAULT_PROFILES_FILE:-$_steerseg_root/steerseg_ros/config/fastdds_shm.xml}
unset _steerseg_root
