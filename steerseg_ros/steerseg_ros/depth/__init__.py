"""Depth and 3D, free of ROS: the colour camera's model, depth images in metres, depth/colour
pairing by stamp, an object's 3D position, extent and points from its mask, and the check that
a track's 3D position does not jump."""
from steerseg_ros.depth.camera import CameraModel, check_depth_size, depth_to_metres  # noqa: F401
from steerseg_ros.depth.estimate import EstimatorOptions, Object3D, estimate_object_3d, object_points  # noqa: F401
from steerseg_ros.depth.pairing import DepthPairer, StampOffset  # noqa: F401
from steerseg_ros.depth.motion import Jump, JumpCheck  # noqa: F401
