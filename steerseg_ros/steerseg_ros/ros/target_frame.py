"""tf2 in the tracker node: the 3D outputs in `target_frame`, and the optional target frames.

Owns `TargetFrame`: while `target_frame` is set, a tf2 `Buffer` fed by a `TransformListener` on
the node (its subscriptions to /tf and /tf_static are served by the node's executor), and the
lookup, at each colour image's stamp, of the transform from the camera's optical frame
(camera_info's frame_id) into `target_frame`, applied to the frame's 3D step
(steerseg_ros.depth.transform does the arithmetic). A missing, disconnected or stale transform
rejects that frame's 3D: counted as rejected.tf.<reason> on /diagnostics and logged (throttled
by the node), the frame then published in 2D, so that nothing downstream ever receives a camera
frame pose labelled as `target_frame`. It also broadcasts each target's position as the tf frame
`target_<id>` when `publish_target_tf` is true.

tf2_ros comes from a source build (scripts/setup_env.sh, vendor/ros2_msgs) where no ROS
installation provides it: imported only when `target_frame` or `publish_target_tf` asks for it.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from steerseg_ros.depth.transform import RigidTransform, transform_object
from steerseg_ros.ros.depth_input import Frame3D
from steerseg_ros.ros.standard_outputs import target_poses


def _import_tf2():
    try:
        import tf2_ros
    except ImportError as e:
        raise RuntimeError(
            f"target_frame and publish_target_tf need tf2_ros ({e}): install ROS 2's tf2_ros, or run "
            "scripts/setup_env.sh with the shared folder's vendor/ros2_msgs and source scripts/env.sh") from e
    return tf2_ros


class TargetFrame:
    """The tf2 side of the tracker node (see the module docstring). `reject(reason, text)`
    counts and logs a rejection; `place` runs in the processing thread."""

    def __init__(self, node, reject: Callable[[str, str], None]):
        self._node = node
        self._reject = reject
        self._buffer: Any = None
        self._listener: Any = None
        self._broadcaster: Any = None
        self.frame = ""
        self._timeout_s = 0.0

    def start(self, frame: str, timeout_s: float, broadcast: bool) -> None:
        """At activate: listen to tf when `frame` is set; broadcast target frames when asked."""
        self.frame, self._timeout_s = frame, timeout_s
        if frame:
            tf2_ros = _import_tf2()
            if self._buffer is None:
                self._buffer = tf2_ros.Buffer()
            self._listener = tf2_ros.TransformListener(self._buffer, self._node)
        if broadcast:
            self._broadcaster = _import_tf2().TransformBroadcaster(self._node)

    def stop(self) -> None:
        """At deactivate: stop listening and broadcasting (the buffer stays for the next activate)."""
        if self._listener is not None:
            self._listener.unregister()
            self._listener = None
        if self._broadcaster is not None:
            self._node.destroy_publisher(self._broadcaster.pub_tf)
            self._broadcaster = None

    def place(self, frame3d: Frame3D, stamp_ns: int) -> Optional[Frame3D]:
        """The frame's 3D in `target_frame` (as it is without one, or when the camera frame is
        the target); None when the transform at the image's stamp is not known (rejected)."""
        target = self.frame
        if not target or target == frame3d.frame_id:
            return frame3d
        transform = self._lookup(frame3d.frame_id, stamp_ns)
        if transform is None:
            return None
        objects = {i: transform_object(transform, obj) for i, obj in frame3d.objects.items()}
        return Frame3D(target, objects, frame3d.seconds)

    def _lookup(self, source: str, stamp_ns: int) -> Optional[RigidTransform]:
        import tf2_ros
        from rclpy.duration import Duration
        from rclpy.time import Time

        buffer = self._buffer
        if buffer is None:  # deactivated meanwhile
            return None
        when = Time(nanoseconds=stamp_ns)
        text = f"no transform {source} -> {self.frame} at the image's stamp {stamp_ns * 1e-9:.3f} s"
        try:
            msg = buffer.lookup_transform(self.frame, source, when, Duration(seconds=self._timeout_s))
        except tf2_ros.ExtrapolationException as e:
            self._reject("tf.stale", f"{text} (the transform does not cover that time: {e}); this frame is "
                         "published in 2D")
            return None
        except tf2_ros.ConnectivityException as e:
            self._reject("tf.unconnected", f"{text} ({e}); this frame is published in 2D")
            return None
        except tf2_ros.TransformException as e:
            self._reject("tf.missing", f"{text} ({e}); this frame is published in 2D")
            return None
        t, q = msg.transform.translation, msg.transform.rotation
        try:
            return RigidTransform((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))
        except ValueError as e:
            self._reject("tf.invalid", f"{text}: {e}")
            return None

    def broadcast(self, tracks: list) -> None:
        """Send each target's pose (standard_outputs.target_pose of its Track messages on this
        frame) on tf as the frame target_<target id>: a child of the frame its position is in,
        no rotation, stamped with the image's stamp. Nothing unless publish_target_tf is on."""
        broadcaster = self._broadcaster
        if broadcaster is None:
            return
        from geometry_msgs.msg import TransformStamped

        out = []
        for target_id, pose in sorted(target_poses(tracks).items()):
            msg = TransformStamped(header=pose.header, child_frame_id=f"target_{target_id}")
            p = pose.pose.position
            msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = p.x, p.y, p.z
            msg.transform.rotation.w = 1.0
            out.append(msg)
        if not out:
            return
        try:
            broadcaster.sendTransform(out)
        except Exception as e:  # deactivated meanwhile
            self._node.get_logger().debug(f"target frames not sent: {e}")
