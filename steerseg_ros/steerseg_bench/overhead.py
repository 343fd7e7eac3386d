"""The node_overhead section: per-frame time of the tracker step and of the node's own work
around it (image conversion in, label image, overlay drawing, track and marker messages,
serialisation of everything published), in this process without DDS, with the overlay and
markers drawn and without (nobody subscribes); goals: <= 5% of the step drawn, <= 2% undrawn.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from steerseg_bench.common import load_sequence, ms_figures

FRAME_NS = 33_333_333
PARTS = ("convert_in", "pipeline_other", "messages", "serialise", "messages_undrawn", "serialise_undrawn")


def node_overhead(args: argparse.Namespace) -> dict[str, Any]:
    from steerseg_ros.streaming import backends
    from steerseg_ros.streaming.pipeline import Pipeline, PipelineConfig
    from steerseg_ros.ros.main_loop import fix_mmap_threshold

    fix_mmap_threshold()  # the allocator as the node process runs it
    names, images, masks = load_sequence(args.data, args.sequence, args.frames)
    config = PipelineConfig(asynchronous=False, regrounding_period_s=0.0)
    # The steady state of a node that has run for a while: its buffer is full and each frame is
    # converted into the memory of one that left it. So the sequence is played forth and back
    # for a full buffer plus the measured frames, and the timings start once the buffer is full.
    skip = config.buffer_size + args.warmup
    period = max(2 * len(images) - 2, 1)
    order = [min(i % period, period - i % period) for i in range(skip + max(len(images), 60))]
    incoming = _incoming_messages(images, order)
    names = [names[j] for j in order]
    tracker = backends.make_tracker(args.tracker)
    pipeline = Pipeline(backends.make_grounder(args.grounder), tracker, config)
    step = _StepTimer(tracker)
    try:
        parts, cpu = _time_frames(pipeline, step, incoming, names, masks[0], skip)
    finally:
        pipeline.close()
    height, width = images[0].shape[:2]
    out: dict[str, Any] = {"frames": len(parts["convert_in"]), "image": f"{width}x{height}", "sequence": args.sequence,
                           "frames_into_reused_memory": pipeline.buffer.spares_given}
    out.update(_figures(step.wall[max(0, skip - 1):], parts, cpu))
    return out


def _incoming_messages(images, order: list[int]) -> list:
    """What the subscription callback hands over: each frame's message as deserialised from the
    wire."""
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    from steerseg_ros.ros.image_conversion import rgb_to_image
    from steerseg_ros.ros.messages import header_at

    return [deserialize_message(serialize_message(rgb_to_image(images[j], "bgr8", header_at(i * FRAME_NS, "camera"))),
                                Image) for i, j in enumerate(order)]


class _StepTimer:
    """Wraps the tracker's step to record its wall and process CPU time per call."""

    def __init__(self, tracker):
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._step = tracker.step
        tracker.step = self

    def __call__(self, frame):
        t, c = time.perf_counter(), time.process_time()
        result = self._step(frame)
        self.wall.append(time.perf_counter() - t)
        self.cpu.append(time.process_time() - c)
        return result


def _time_frames(pipeline, step: _StepTimer, incoming: list, names: list[str], seed, skip: int):
    """Runs every message through conversion, the pipeline and the output messages (drawn and
    undrawn), timing each part; returns the per-part wall times and the process CPU times of
    the step and of the node's work around it, from frame `skip` on."""
    from rclpy.serialization import serialize_message

    from steerseg_ros.ros.image_conversion import ImageBuffer
    from steerseg_ros.ros.frame_input import incoming_rgb
    from steerseg_ros.ros.outputs import output_messages

    overlay_buffer = ImageBuffer()  # as the node draws: into reused message memory
    mask_buffer = ImageBuffer()
    parts: dict[str, list[float]] = {k: [] for k in PARTS}
    # Process CPU time too: on a shared, loaded machine wall times stretch with the load, CPU
    # times much less, so their ratio is the steadier figure there.
    cpu: dict[str, list[float]] = {"step": [], "drawn": [], "undrawn": []}
    for i, msg in enumerate(incoming):
        t0, c0 = time.perf_counter(), time.process_time()
        rgb = incoming_rgb(msg, pipeline)
        t1, c1 = time.perf_counter(), time.process_time()
        n_steps = len(step.wall)
        output = pipeline.process(rgb, i * FRAME_NS + 1, "camera", names[i])
        t2, c2 = time.perf_counter(), time.process_time()
        stepped = len(step.wall) > n_steps
        step_s = step.wall[-1] if stepped else 0.0
        if i == 0:
            output.tracks.append(pipeline.seed_mask(seed, output.frame.stamp_ns))
        outgoing = output_messages(output, msg.header, rgb, overlay_buffer=overlay_buffer, mask_buffer=mask_buffer)
        t3 = time.perf_counter()
        for _, m in outgoing:
            serialize_message(m)
        t4, c4 = time.perf_counter(), time.process_time()
        # What the node does when nobody subscribes to the overlay and the markers.
        undrawn = output_messages(output, msg.header, rgb, overlay=False, markers=False, mask_buffer=mask_buffer)
        t5 = time.perf_counter()
        for _, m in undrawn:
            serialize_message(m)
        t6, c6 = time.perf_counter(), time.process_time()
        if i < skip:
            continue
        if stepped:
            cpu["step"].append(step.cpu[-1])
            cpu["drawn"].append((c1 - c0) + (c4 - c2))
            cpu["undrawn"].append((c1 - c0) + (c6 - c4))
        for name, value in zip(PARTS, (t1 - t0, t2 - t1 - step_s, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            parts[name].append(value)
    return parts, cpu


def _figures(steps: list[float], parts: dict[str, list[float]], cpu: dict[str, list[float]]) -> dict[str, Any]:
    overhead = [a + b + c for a, b, c in zip(parts["convert_in"], parts["messages"], parts["serialise"])]
    undrawn = [a + b + c for a, b, c in zip(parts["convert_in"], parts["messages_undrawn"], parts["serialise_undrawn"])]
    out: dict[str, Any] = {f"tracker_step_{k}": v for k, v in ms_figures(steps).items()}
    for name, values in parts.items():
        out.update({f"{name}_{k}": v for k, v in ms_figures(values).items()})
    out.update({f"node_overhead_{k}": v for k, v in ms_figures(overhead).items()})
    out.update({f"node_overhead_undrawn_{k}": v for k, v in ms_figures(undrawn).items()})
    ratio = statistics.median(overhead) / statistics.median(steps)
    ratio_undrawn = statistics.median(undrawn) / statistics.median(steps)
    out["overhead_over_step"] = round(ratio, 4)
    out["overhead_over_step_undrawn"] = round(ratio_undrawn, 4)
    if cpu["step"]:
        step_cpu_median = statistics.median(cpu["step"])
        out["tracker_step_cpu_median_ms"] = round(1e3 * step_cpu_median, 3)
        out["overhead_over_step_cpu"] = round(statistics.median(cpu["drawn"]) / step_cpu_median, 4)
        out["overhead_over_step_undrawn_cpu"] = round(statistics.median(cpu["undrawn"]) / step_cpu_median, 4)
    out["goal_overhead_at_most_5pct"] = ratio <= 0.05
    out["goal_undrawn_at_most_2pct"] = ratio_undrawn <= 0.02
    out["note"] = ("node overhead = convert_in + messages (label image, overlay, tracks, markers) + serialise; "
                   "undrawn: the same without overlay and markers (nobody subscribes to them); "
                   "pipeline_other is the core's own bookkeeping around the step, reported apart")
    return out
