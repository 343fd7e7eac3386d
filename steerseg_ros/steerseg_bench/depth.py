"""The depth sections on the synthetic RGB-D scene (every corruption on), at 640x480 and 1280x720:
- depth3d: the 3D step (position, extent, spread from mask + depth) per object per frame, and its
  share of the frame time against the built-in tracker's step on the same frames; goal: <= 1 ms
  for one object.
- depth3d_node: the same scene through the node as its own process over DDS (colour, depth and
  camera_info, one seeded object, each frame once the previous one was answered): the node's
  time per frame and its 3D step's (as on /diagnostics) and the 3D step's share of it.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

from steerseg_bench.common import SectionSkipped, ms_figures
from steerseg_bench.node import NodeRun

SIZES = ((640, 480), (1280, 720))


def _scene(args: argparse.Namespace, n: int, width: int, height: int):
    from steerseg_testing.synthetic_rgbd import CORRUPTIONS, SceneConfig, SyntheticRGBDScene, default_camera

    return SyntheticRGBDScene(SceneConfig(n_frames=n, corruptions=CORRUPTIONS),
                              camera=default_camera(width, height), davis_root=args.data)


# ---- depth3d: the 3D step ------------------------------------------------------------------------
def depth3d(args: argparse.Namespace) -> dict[str, Any]:
    """The 3D step (depth.estimate_object_3d) per object per frame on the synthetic RGB-D scene
    with every corruption on, at 640x480 and 1280x720, against the built-in tracker's step on
    the same frames (its share of a frame's time = 3D / (tracker step + 3D))."""
    from steerseg_testing.synthetic_rgbd import CORRUPTIONS

    n = min(args.frames or 30, 60)
    repeats = 5
    out: dict[str, Any] = {"frames": n, "repeats": repeats, "corruptions": "+".join(CORRUPTIONS), "goal_ms": 1.0}
    try:
        for width, height in SIZES:
            out.update(_depth3d_at(args, _scene(args, n, width, height), f"{width}x{height}", repeats))
    except FileNotFoundError as e:
        raise SectionSkipped(str(e))
    out["note"] = ("one object, median over frames x repeats; the camera's undistortion table is built once per "
                   "camera (not timed); share_of_frame = 3D / (built-in tracker step + 3D) on the same frames, in wall "
                   "time and in process CPU time")
    return out


def _depth3d_at(args: argparse.Namespace, scene, key: str, repeats: int) -> dict[str, Any]:
    from steerseg_ros.depth import estimate_object_3d
    from steerseg_ros.tracking.flow import FlowTrackerConfig
    from steerseg_bench.tracker import track_sequence

    frames = list(scene)
    estimate_object_3d(frames[0].mask, frames[0].depth_m, scene.camera)  # the camera's rays, once
    plain, points, cpu = [], [], []
    for _ in range(repeats):
        for f in frames:
            t, c = time.perf_counter(), time.process_time()
            estimate_object_3d(f.mask, f.depth_m, scene.camera)
            plain.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            t = time.perf_counter()
            estimate_object_3d(f.mask, f.depth_m, scene.camera, max_points=2000)
            points.append(time.perf_counter() - t)
    _, wall, tcpu, _ = track_sequence(FlowTrackerConfig(), [f.rgb for f in frames], [f.mask_true for f in frames])
    skip = min(args.warmup, len(wall) - 1)
    step = float(np.median(wall[skip:]))
    d3 = statistics.median(plain)
    out: dict[str, Any] = {f"{key}.mask_pixels_median": int(np.median([f.mask.sum() for f in frames]))}
    out.update({f"{key}.object3d_{k}": v for k, v in ms_figures(plain).items()})
    out[f"{key}.object3d_p90_ms"] = round(1e3 * float(np.percentile(plain, 90)), 3)
    # Process CPU time moves less with a shared machine's load than wall time does.
    out[f"{key}.object3d_cpu_median_ms"] = round(1e3 * statistics.median(cpu), 3)
    out.update({f"{key}.object3d_with_2000_points_{k}": v for k, v in ms_figures(points).items()})
    out[f"{key}.tracker_step_median_ms"] = round(1e3 * step, 3)
    out[f"{key}.tracker_step_cpu_median_ms"] = round(1e3 * float(np.median(tcpu[skip:])), 3)
    out[f"{key}.share_of_frame"] = round(d3 / (step + d3), 4)
    tc, dc = float(np.median(tcpu[skip:])), statistics.median(cpu)
    out[f"{key}.share_of_frame_cpu"] = round(dc / (tc + dc), 4)
    out[f"{key}.goal_met"] = bool(d3 <= 1e-3)
    return out


# ---- depth3d_node: the 3D step's share inside the node ----------------------------------------------
def depth3d_node(args: argparse.Namespace) -> dict[str, Any]:
    """The synthetic RGB-D scene through the node process (built-in or chosen backends): per frame
    camera_info, depth (16UC1) and colour, the first with the true mask as seed, the next once the
    previous frame's tracks came back. Reads the node's own timings from /diagnostics."""
    from steerseg_testing.synthetic_rgbd import CORRUPTIONS

    n = min(args.frames or 30, 60)
    out: dict[str, Any] = {"frames": n, "corruptions": "+".join(CORRUPTIONS)}
    for width, height in SIZES:
        try:
            scene = _scene(args, n, width, height)
        except FileNotFoundError as e:
            raise SectionSkipped(str(e))
        run = NodeRun(args, {"stats_period_s": 0.5, "depth.qos": "reliable", "depth.wait_s": 1.0})
        try:
            status = _play_scene(run, scene, n)
        finally:
            run.close()
        if "ms_3d_per_frame" not in status:
            raise RuntimeError(f"the node reported no 3D step (depth never paired?); see {run.log_path}")
        key = f"{width}x{height}"
        frame_ms, d3_ms = float(status["ms_per_frame"]), float(status["ms_3d_per_frame"])
        out[f"{key}.node_ms_per_frame"] = frame_ms
        out[f"{key}.node_3d_ms_per_frame"] = d3_ms
        out[f"{key}.node_3d_share"] = round(d3_ms / frame_ms, 4)
        out[f"{key}.frames_with_3d"] = int(status.get("frames_3d", 0))
    out["note"] = ("means over the frames, from the node's /diagnostics; the node's frame time covers image "
                   "conversion, the tracker step, the 3D step (depth to metres and every live track) and "
                   "building and publishing the outputs; one object")
    return out


def _play_scene(run: NodeRun, scene, n: int) -> dict[str, str]:
    """Publishes the scene's first `n` frames to the node, each once the previous one was
    answered; returns the node's /diagnostics values once it has processed them all."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from steerseg_ros.ros.image_conversion import array_to_image, depth_array_to_image, rgb_to_image
    from steerseg_ros.ros.messages import header_at
    from steerseg_testing.synthetic_rgbd import camera_info_fields

    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    depth_pub = run.node.create_publisher(Image, "depth", reliable)
    info_pub = run.node.create_publisher(CameraInfo, "camera_info", reliable)
    seed_pub = run.node.create_publisher(Image, "seed_mask", reliable)
    status: dict[str, str] = {}
    run.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: status.update(
        {kv.key: kv.value for s in m.status if s.name.startswith("steerseg:") for kv in s.values}), 10)
    run.wait_up()
    while min(p.get_subscription_count() for p in (depth_pub, info_pub, seed_pub)) == 0:
        time.sleep(0.05)
    fields = camera_info_fields(scene.camera)
    for i in range(n):
        f = scene.frame(i)
        stamp = 10**12 + i * (10**9 // 30)
        header = header_at(stamp, fields["frame_id"])
        info = CameraInfo(header=header, width=scene.camera.width, height=scene.camera.height,
                          distortion_model=fields["distortion_model"])
        info.k, info.d, info.r, info.p = fields["k"], fields["d"], fields["r"], fields["p"]
        info_pub.publish(info)
        depth_pub.publish(depth_array_to_image(f.depth_mm, header))
        if i == 0:
            seed_pub.publish(array_to_image(f.mask_true.astype(np.uint8) * 255, "mono8", header))
        run.images.publish(rgb_to_image(f.rgb, "bgr8", header))
        deadline = time.monotonic() + 60.0
        while not any(a[1] == stamp for a in list(run.arrivals)):
            if time.monotonic() > deadline or run.process.poll() is not None:
                raise RuntimeError(f"no answer for frame {i}; see {run.log_path}")
            time.sleep(0.005)
    deadline = time.monotonic() + 10.0
    while int(status.get("frames_processed", 0)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return status
