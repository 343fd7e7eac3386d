"""steerseg_ros: follow spoken object references with a camera.

The core (buffer, grounding, prompts, tracking, tracklets, pipeline, metrics, render) is plain
Python and never imports rclpy; the ROS 2 layer lives in `steerseg_ros.ros`.
"""
import pkgutil

# In a colcon build, rosidl generates `steerseg_ros.msg` into the install space while the
# hand-written modules may be imported from the source tree (running from the checkout).
# Extending the package path lets both halves be found wherever the import started.
__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"
