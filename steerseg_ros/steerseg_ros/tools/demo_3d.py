"""steerseg-demo's 3D record: each frame's 3D per track, as the node published it on `tracks`,
written as OUT/tracks_3d.csv and OUT/tracks_3d.jsonl, and a picture of the target's 3D path
(OUT/target_path.png).

Owns the rows (one per frame and track with a 3D position: the frame's number, name and stamp,
the track, its position, spread, standard error and extent, in the frame the node named) and
their files. It reads the node's Track messages by their field names and imports no ROS.
The plot needs matplotlib (the `eval` extra); without it the demo says so and writes the rest.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional

FIELDS = ["frame", "name", "stamp_ns", "track_id", "target_id", "label", "state", "score", "frame_id",
          "x", "y", "z", "position_stderr", "std_x", "std_y", "std_z",
          "min_x", "min_y", "min_z", "max_x", "max_y", "max_z", "depth_points"]


def track_rows(index: int, stamp_ns: int, tracks) -> list[dict[str, Any]]:
    """The rows of one frame: its tracks (steerseg_msgs/Track) that have a 3D position."""
    rows = []
    for t in tracks:
        if not t.has_position:
            continue
        p, s, lo, hi = t.position, t.position_std, t.extent_min, t.extent_max
        rows.append({"frame": index, "name": None, "stamp_ns": stamp_ns, "track_id": int(t.id),
                     "target_id": int(t.target_id), "label": t.label, "state": int(t.state),
                     "score": round(float(t.score), 4), "frame_id": t.position_frame_id,
                     "x": float(p.x), "y": float(p.y), "z": float(p.z),
                     "position_stderr": float(t.position_stderr), "std_x": float(s.x), "std_y": float(s.y),
                     "std_z": float(s.z), "min_x": float(lo.x), "min_y": float(lo.y), "min_z": float(lo.z),
                     "max_x": float(hi.x), "max_y": float(hi.y), "max_z": float(hi.z),
                     "depth_points": int(t.depth_points)})
    return rows


def write_3d(out_dir: Path, rows_by_frame: dict[int, list[dict[str, Any]]], names: list[str]) -> dict[str, Any]:
    """Writes the CSV, the JSONL and (matplotlib permitting) the plot; returns what the summary
    says about them."""
    rows = []
    for index in sorted(rows_by_frame):
        for row in rows_by_frame[index]:
            rows.append({**row, "name": names[index] if index < len(names) else f"{index:05d}"})
    csv_path, jsonl_path = out_dir / "tracks_3d.csv", out_dir / "tracks_3d.jsonl"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    with open(jsonl_path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    summary: dict[str, Any] = {"tracks_3d_csv": str(csv_path), "tracks_3d_jsonl": str(jsonl_path),
                               "frames_with_3d": len({r["frame"] for r in rows})}
    target = target_track(rows)
    if target is None:
        summary["target_path"] = "no plot: no track had a 3D position (does the bag have depth and camera_info?)"
        return summary
    summary["target_track_id"] = target
    plot = plot_path([r for r in rows if r["track_id"] == target], out_dir / "target_path.png")
    summary["target_path"] = plot
    return summary


def target_track(rows: list[dict[str, Any]]) -> Optional[int]:
    """The track the plot follows: the one with 3D on the most frames (the oldest on a tie)."""
    counts: dict[int, int] = {}
    for r in rows:
        counts[r["track_id"]] = counts.get(r["track_id"], 0) + 1
    return min(counts, key=lambda tid: (-counts[tid], tid)) if counts else None


def plot_path(rows: list[dict[str, Any]], path: Path) -> str:
    """The target's path seen from above (x against z, the camera at the origin) and its x, y, z
    over time; the PNG's path, or why there is none."""
    try:
        import matplotlib
    except ImportError:
        message = "no plot: matplotlib is not installed (pip install 'steerseg_ros[eval]' or matplotlib)"
        print(f"steerseg-demo: {message}")
        return message
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    t0 = rows[0]["stamp_ns"]
    seconds = [(r["stamp_ns"] - t0) / 1e9 for r in rows]
    fig, (top, over_time) = plt.subplots(1, 2, figsize=(11, 4.5))
    top.plot([r["x"] for r in rows], [r["z"] for r in rows], "o-", markersize=3)
    top.plot([0], [0], "k^", label="camera")
    top.set(xlabel="x (m, right)", ylabel="z (m, forward)", title="seen from above")
    top.axis("equal")
    top.legend()
    for axis in ("x", "y", "z"):
        over_time.plot(seconds, [r[axis] for r in rows], label=axis)
    over_time.set(xlabel="time (s)", ylabel="m", title="position over time")
    over_time.legend()
    fig.suptitle(f"track {rows[0]['track_id']} ({rows[0]['label'] or 'seeded'}) in {rows[0]['frame_id']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
