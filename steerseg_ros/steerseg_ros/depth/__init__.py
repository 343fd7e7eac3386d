"""Depth and 3D, free of ROS: the colour camera's model, depth images in metres, depth/colour
pairing by stamp, and an object's 3D position, extent and points from its mask."""
from steerseg_ros.depth.estimate import (  # noqa: F401
    CameraModel, DepthPairer, EstimatorOptions, Object3D, check_depth_size, depth_to_metres, estimate_object_3d,
    object_points)
