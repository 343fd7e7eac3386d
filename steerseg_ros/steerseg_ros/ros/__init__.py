"""The ROS 2 layer: the lifecycle node, message and image conversion. Only this package imports rclpy."""
