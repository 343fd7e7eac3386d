"""steerseg-synthetic-rgbd: write the synthetic RGB-D scene (steerseg_testing.synthetic_rgbd) as a
ROS 2 bag, with its ground truth.

    steerseg-synthetic-rgbd --out /tmp/scene --corruptions noise holes flying spill
    steerseg-play --bag /tmp/scene

The bag is a folder (rosbag2 layout: one .mcap or .db3 file and metadata.yaml) with a colour
image, an aligned depth image and the colour camera_info per frame, on RealSense-style topics.
--truth writes one JSON line per frame: index, stamp_ns, the true 3D position (metres, colour
optical frame; the visible surface's per-axis median) and the true mask's box.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from steerseg_ros.offline.bags import STORAGES
from steerseg_testing.synthetic_rgbd import write_scene_bag
from steerseg_testing.synthetic_rgbd import CORRUPTIONS, SceneConfig, SyntheticRGBDScene


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="steerseg-synthetic-rgbd", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="bag folder to write (must not exist unless --overwrite)")
    p.add_argument("--storage", choices=STORAGES, default="mcap")
    p.add_argument("--frames", type=int, default=40, help="number of frames")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate of the stamps")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--corruptions", nargs="*", default=[], choices=CORRUPTIONS)
    p.add_argument("--depth-encoding", choices=("16UC1", "32FC1"), default="16UC1")
    p.add_argument("--colour-encoding", choices=("rgb8", "bgr8"), default="rgb8")
    p.add_argument("--depth-offset-ms", type=float, default=0.0, help="depth stamps this much after colour")
    p.add_argument("--depth-every", type=int, default=1, help="depth for every N-th frame only (another rate)")
    p.add_argument("--object", default="blackswan", help="DAVIS sequence whose first-frame object is rendered")
    p.add_argument("--davis", type=Path, default=None, help="the davis16 folder (default: ../shared/data/davis16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truth", type=Path, default=None, help="write the ground truth here (JSON lines)")
    p.add_argument("--overwrite", action="store_true")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from steerseg_testing.synthetic_rgbd import default_camera

    config = SceneConfig(n_frames=args.frames, fps=args.fps, corruptions=tuple(args.corruptions),
                         object_sequence=args.object, seed=args.seed)
    scene = SyntheticRGBDScene(config, camera=default_camera(args.width, args.height), davis_root=args.davis)
    written = write_scene_bag(args.out, scene, storage=args.storage, colour_encoding=args.colour_encoding,
                              depth_encoding=args.depth_encoding, depth_offset_ns=int(args.depth_offset_ms * 1e6),
                              depth_every=args.depth_every, overwrite=args.overwrite)
    if args.truth is not None:
        with open(args.truth, "w") as f:
            for frame in scene:
                ys, xs = np.nonzero(frame.mask_true)
                box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if ys.size else None
                f.write(json.dumps({"index": frame.index, "stamp_ns": frame.stamp_ns,
                                    "position": [float(v) for v in frame.position], "box_xyxy": box}) + "\n")
    print(json.dumps({"bag": written["path"], "colour": len(written["colour"]), "depth": len(written["depth"]),
                      "camera_info": len(written["camera_info"]), "truth": str(args.truth) if args.truth else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
