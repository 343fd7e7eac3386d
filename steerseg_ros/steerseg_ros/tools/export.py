"""steerseg-export: write the SAM2 image encoder to ONNX (and, where TensorRT and a GPU are
present, build an FP16 TensorRT engine from it) for the tracker's `encoder` option.

    steerseg-export --model facebook/sam2.1-hiera-tiny --onnx sam2_encoder.onnx
    steerseg-export --model tiny --onnx enc.onnx --tensorrt enc.engine   # GPU with TensorRT only

The ONNX file has a dynamic batch dimension; unless --no-check is given, onnxruntime's output is
compared with torch's on a random input and the largest difference printed. Exit status: 0 done,
2 the model could not be loaded, 3 the TensorRT engine could not be built (the ONNX file is
still written), 1 anything else.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Optional

log = logging.getLogger("steerseg_ros.tools.export")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="steerseg-export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="facebook/sam2.1-hiera-tiny",
                   help="SAM2 checkpoint: hub id, short name (tiny, small, base-plus, large) or folder")
    p.add_argument("--onnx", required=True, help="where to write the ONNX encoder")
    p.add_argument("--tensorrt", default="", help="also build an FP16 TensorRT engine here (needs TensorRT and a GPU)")
    p.add_argument("--max-batch", type=int, default=4, help="largest batch the TensorRT engine accepts")
    p.add_argument("--fp32", action="store_true", help="build the TensorRT engine in FP32 instead of FP16")
    p.add_argument("--no-check", action="store_true", help="skip comparing onnxruntime with torch")
    p.add_argument("--local-files-only", action="store_true", help="never contact the model hub")
    return p.parse_args(argv)


def check_onnx(model, onnx_path: str, batch: int = 2) -> float:
    """Largest absolute difference between onnxruntime's and torch's encoder outputs on a random
    batch of `batch` images."""
    import torch

    from steerseg_ros.tracking.sam2_encoder import OnnxEncoder, TorchEncoder

    size = model.config.image_size
    pixel_values = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    reference = TorchEncoder(model)(pixel_values)
    exported = OnnxEncoder(onnx_path, torch.device("cpu"), torch.float32)(pixel_values)
    return max(float((a - b).abs().max()) for a, b in zip(reference, exported))


def main(argv: Optional[list[str]] = None) -> int:
    # The ONNX optimiser logs every rewrite at INFO: keep the root logger at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    args = parse_args(argv)
    from steerseg_ros.grounding.base import ModelUnavailableError
    from steerseg_ros.tracking.sam2 import load_model
    from steerseg_ros.tracking.sam2_encoder import EncoderUnavailableError, build_tensorrt_engine, export_onnx

    try:
        model = load_model(args.model, local_files_only=args.local_files_only)
    except ModelUnavailableError as e:
        print(f"steerseg-export: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    export_onnx(model, args.onnx)
    log.info("wrote %s (image size %d, dynamic batch) in %.1f s", args.onnx, model.config.image_size,
             time.perf_counter() - start)
    if not args.no_check:
        log.info("onnxruntime vs torch: largest difference %.3g", check_onnx(model, args.onnx))
    if args.tensorrt:
        try:
            build_tensorrt_engine(args.onnx, args.tensorrt, model.config.image_size, args.max_batch, fp16=not args.fp32)
        except EncoderUnavailableError as e:
            print(f"steerseg-export: no TensorRT engine: {e}", file=sys.stderr)
            return 3
        log.info("wrote TensorRT engine %s", args.tensorrt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
