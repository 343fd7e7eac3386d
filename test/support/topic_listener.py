"""A test participant that keeps what steerseg-play sends (not a test module).

`TopicListener` joins a ROS domain in its own rclpy context (no signal handlers: the test
process keeps its own), subscribes reliably to the player's image, depth and camera_info
topics and keeps every message, in arrival order, for the tests of the player (test_play.py,
test_bags.py) to wait on and check.
"""
from __future__ import annotations

import threading


class TopicListener:
    """Keeps the messages on `image`, `depth` and `camera_info` (by those names) in `got`."""

    def __init__(self, domain_id: int, depth: int = 100):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import CameraInfo, Image

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("play_test_listener", context=self.context)
        self.got: dict[str, list] = {"image": [], "depth": [], "camera_info": []}
        self.lock = threading.Lock()
        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        for topic, msg_type in (("image", Image), ("depth", Image), ("camera_info", CameraInfo)):
            self.node.create_subscription(msg_type, topic, self._keeper(topic), qos)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _keeper(self, topic: str):
        def keep(msg) -> None:
            with self.lock:
                self.got[topic].append(msg)
        return keep

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def count(self, topic: str) -> int:
        with self.lock:
            return len(self.got[topic])

    def stamps(self, topic: str) -> list[int]:
        from steerseg_ros.ros.messages import stamp_to_ns

        with self.lock:
            return [stamp_to_ns(m.header.stamp) for m in self.got[topic]]

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        self._thread.join(timeout=5.0)
