"""steerseg_ros: follow spoken object references with a camera.

The core (frame, streaming, grounding, tracking, depth, offline, render) is plain Python and never
imports rclpy; the ROS 2 layer lives in `steerseg_ros.ros`, the messages in the `steerseg_msgs`
package. README.md's "How the code is laid out" walks through it.
"""
__version__ = "0.1.0"
