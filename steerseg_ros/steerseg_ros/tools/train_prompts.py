"""steerseg-train-prompts: train SteerSeg's two soft-prompt sets with the vision-language model
frozen, and write the safetensors file the grounder loads (`grounder.soft_prompt_file`).

    steerseg-train-prompts --model Qwen/Qwen2.5-VL-3B-Instruct --root data/ref-youtube-vos \\
        --out prompts/steer-3b.safetensors --val-fraction 0.05
    steerseg-train-prompts ... --resume            # continue from OUT.ckpt after a stop

A small dataset in the same layout, made from this project's DAVIS 2016 folder, to try it without
downloading anything (its held-out videos are used for validation unless --val-videos is given):

    steerseg-train-prompts --from-davis ../shared/data/davis16 --root /tmp/davis-train \\
        --model /tmp/tiny/qwen2_5_vl --out /tmp/steer.safetensors --steps 40 --keyframes 4

Every option of `training.TrainConfig` is a flag (`--soft-tokens 64`, `--no-cot`, ...). Loss
and validation metrics go to OUT.log.jsonl and the progress bar.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Optional

from steerseg_ros.grounding.base import GroundingError
from steerseg_ros.offline.training import TrainConfig, TrainingError

_TYPES = {"int": int, "float": float, "str": str}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steerseg-train-prompts", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=getattr(defaults, f.name),
                                help=help_text)
        else:
            parser.add_argument(flag, type=_TYPES[f.type], default=getattr(defaults, f.name), help=help_text)
    parser.add_argument("--from-davis", metavar="DAVIS16", default="",
                        help="first write a small training set in the Ref-YouTube-VOS layout to --root from "
                             "this DAVIS 2016 folder (JPEGImages/480p, Annotations/480p, expressions.json)")
    parser.add_argument("--demo-side", type=int, default=224, help="with --from-davis: longer image side")
    parser.add_argument("--demo-step", type=int, default=5, help="with --from-davis: keep every N-th frame")
    parser.add_argument("--demo-later", type=float, default=0.0,
                        help="with --from-davis: hold out the last this fraction of every video's frames "
                             "(as <video>-later) instead of whole videos")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    try:
        if args.from_davis:
            from steerseg_ros.offline.davis_demo import build_from_davis, heldout_rule

            root = Path(args.root)
            if not (root / "meta_expressions" / "train" / "meta_expressions.json").is_file():
                demo = build_from_davis(args.from_davis, root, step=args.demo_step, max_side=args.demo_side,
                                        later_fraction=args.demo_later)
                print(f"wrote {demo.frames} frames of {len(demo.train_videos) + len(demo.heldout_videos)} "
                      f"videos to {root}", file=sys.stderr)
            if not options["val_videos"] and not options["val_fraction"]:
                videos = [p.name for p in (root / "train" / "JPEGImages").iterdir() if p.is_dir()]
                later = [v for v in videos if v.endswith("-later")]
                options["val_videos"] = ",".join(sorted(later) or heldout_rule(videos))
        config = TrainConfig(**options)
        config.validate()
        from steerseg_ros.offline.training import PromptTrainer

        trainer = PromptTrainer(config)
        result = trainer.train()
    except (TrainingError, GroundingError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"steerseg-train-prompts: {exc}", file=sys.stderr)
        return 2
    if result.interrupted:
        print(f"stopped at step {result.step} of {result.total_steps}; --resume continues from "
              f"{config.checkpoint_path}", file=sys.stderr)
        return 130
    first, last = (result.validations[0], result.validations[-1]) if result.validations else ({}, {})
    for key in ("video_mass", "frame_mass", "fused_mass", "fused_pointing"):
        if key in first:
            print(f"{key}: {first[key]:.3f} -> {last[key]:.3f}")
    print(f"soft prompts: {result.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
