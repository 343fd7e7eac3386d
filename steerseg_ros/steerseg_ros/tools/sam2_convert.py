"""steerseg-sam2-convert: SAM2 checkpoints between Meta's layout (.pt + Hydra config) and a
transformers model folder, both ways (steerseg_ros.tracking.sam2_checkpoints does the work).

    steerseg-sam2-convert meta-to-hf sam2.1_hiera_tiny.pt sam2.1-tiny-hf/
    steerseg-sam2-convert hf-to-meta sam2.1-tiny-hf/ sam2.1_hiera_tiny.pt
"""
from steerseg_ros.tracking.sam2_checkpoints import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
