"""Write tiny randomly initialised checkpoints of the model backends, to try them without weights.

    steerseg-tiny-models --out DIR

writes DIR/qwen2_5_vl (a Qwen2.5-VL model, tokenizer and processor files: `grounder.model`),
DIR/sam2 (a SAM2 video model and its processor files: `tracker.model`), DIR/sam3 (SAM 3's tracker:
`tracker.model` with tracker.backend sam3) and DIR/sam3_detector (SAM 3's concept model with its
tokenizer: `grounder.model` with grounder.backend sam3, or `grounder.sam3_candidates`). They load
through the same code as real checkpoints; their outputs are meaningless, their speed is not
representative.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the checkpoints into")
    parser.add_argument("--family", choices=FAMILIES, default="qwen2_5_vl", help="vision-language model family")
    parser.add_argument("--sam2-size", type=int, default=128, help="SAM2 input size (a multiple of 64)")
    args = parser.parse_args(argv)

    from steerseg_testing.tiny_vlm import build_tiny_checkpoint
    from steerseg_testing.tiny_sam2 import save_random_sam2, tiny_config
    from steerseg_testing import tiny_sam3

    vlm = build_tiny_checkpoint(args.out / args.family, args.family)
    sam2 = save_random_sam2(args.out / "sam2", tiny_config(args.sam2_size))
    sam3 = tiny_sam3.save_random_sam3(args.out / "sam3", tiny_sam3.tiny_config())
    detector = tiny_sam3.save_random_sam3_detector(args.out / "sam3_detector", tiny_sam3.tiny_detector_config())
    print(f"grounder.model: {vlm}\ntracker.model: {sam2}\n"
          f"tracker.model (tracker.backend sam3): {sam3}\n"
          f"grounder.model (grounder.backend sam3) or grounder.sam3_candidates: {detector}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
