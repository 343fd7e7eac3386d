"""Measure the 3D estimate's accuracy on the synthetic RGB-D scene with other DAVIS objects and
seeds than the tests use (a measurement, not a test).

For each object (cut out of its sequence's first frame; the wall textured with another
sequence's frame) and each corruption (steerseg_testing.synthetic_rgbd), the share of frames whose
3D error is within 2 cm and whose depth error is within 2% of the true depth, the median and
worst 3D error, and the median error per axis (a bias shows there).

    python -m steerseg_bench.depth_accuracy [--davis DIR] [--frames 20]
        [--objects dog:goat:1 cows:camel:2 ...] [--corruptions holes flying spill all]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from steerseg_ros.depth import estimate_object_3d
from steerseg_testing.synthetic_rgbd import CORRUPTIONS, SceneConfig, SyntheticRGBDScene

DEFAULT_OBJECTS = ["dog:goat:1", "cows:camel:2", "breakdance:car-shadow:3", "bmx-trees:dog:4", "goat:cows:5"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--davis", default=None, help="the davis16 folder (default: ../shared/data/davis16)")
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--objects", nargs="+", default=DEFAULT_OBJECTS, help="OBJECT:BACKGROUND:SEED")
    p.add_argument("--corruptions", nargs="+", default=["holes", "flying", "spill", "all"],
                   help=f"of {', '.join(CORRUPTIONS)}, none, all")
    args = p.parse_args()
    for spec in args.objects:
        obj, background, seed = spec.split(":")
        for name in args.corruptions:
            corr = CORRUPTIONS if name == "all" else () if name == "none" else (name,)
            scene = SyntheticRGBDScene(SceneConfig(n_frames=args.frames, corruptions=corr, object_sequence=obj,
                                                   background_sequence=background, seed=int(seed)),
                                       davis_root=args.davis)
            errors, ok = [], 0
            for f in scene:
                p3 = np.asarray(estimate_object_3d(f.mask, f.depth_m, scene.camera).position)
                e = p3 - f.position
                errors.append(e)
                ok += bool(np.linalg.norm(e) <= 0.02 and abs(e[2]) <= 0.02 * f.position[2])
            norms = np.linalg.norm(errors, axis=1)
            print(json.dumps({"object": obj, "corruption": name, "within_bound": round(ok / len(scene), 3),
                              "median_mm": round(1e3 * float(np.median(norms)), 1),
                              "worst_mm": round(1e3 * float(norms.max()), 1),
                              "median_axis_mm": [round(1e3 * float(v), 1) for v in np.median(errors, axis=0)]}))


if __name__ == "__main__":
    main()
