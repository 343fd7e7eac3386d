"""The SAM2 image encoder, the per-frame hot path, run through torch, onnxruntime or TensorRT.

Owns `ImageFeatures` (the module that is exported: Hiera backbone, FPN neck and the mask
decoder's two high-resolution projections, i.e. Sam2VideoModel.get_image_features), the three
runners the tracker chooses from (`TorchEncoder`, `OnnxEncoder`, `TensorRTEncoder`),
`export_onnx` and `build_tensorrt_engine`. Every runner returns the features in the layout the
video model caches per frame: three (H*W, B, C) maps, high resolution first, plus their position
encodings, which depend only on the shapes and are computed once.

TensorRT cannot be installed on every machine (its PyPI package downloads from NVIDIA's own
index and needs a CUDA GPU); where it is missing, the TensorRT paths raise
EncoderUnavailableError saying so, and the ONNX encoder is the portable alternative.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional, Union

import torch

from steerseg_ros.tracking.base import TrackerError

ONNX_INPUT = "pixel_values"
ONNX_OUTPUTS = ("features_s0", "features_s1", "features_top")

TENSORRT_MISSING = (
    "TensorRT is not available here: the `tensorrt` Python package could not be imported. It needs "
    "an NVIDIA GPU with CUDA and NVIDIA's package index (`pip install tensorrt`, which downloads "
    "from pypi.nvidia.com). Use the ONNX encoder instead (tracker.encoder: onnx with the .onnx file "
    "that steerseg-export writes), or the torch encoder.")


class EncoderUnavailableError(TrackerError):
    """The requested encoder cannot run on this machine (runtime or file missing)."""


class ImageFeatures(torch.nn.Module):
    """Pixel values (B, 3, S, S) -> the three feature maps the video model reads, each
    (H*W, B, C). This is exactly Sam2VideoModel.get_image_features, minus the position
    encodings (constants), as a plain module to export."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.get_image_features(pixel_values, return_dict=True).fpn_hidden_states)


def position_encodings(model, device, dtype) -> list[torch.Tensor]:
    """The FPN position encodings of the three levels, (H*W, 1, C) each: the same sine
    encoding the neck computes on every call, from the feature shapes alone."""
    vision = model.config.vision_config
    encode = model.vision_encoder.neck.position_encoding
    out = []
    for height, width in vision.backbone_feature_sizes:
        pos = encode((1, vision.fpn_hidden_size, height, width), device, dtype).to(dtype)
        out.append(pos.flatten(2).permute(2, 0, 1))
    return out


class TorchEncoder:
    """The model's own image encoder."""

    name = "torch"

    def __init__(self, model):
        self.model = model
        self.module = ImageFeatures(model)

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        return list(self.module(pixel_values))


class OnnxEncoder:
    """The exported encoder run by onnxruntime (CUDA provider when the device is a GPU and the
    installed onnxruntime has it, else CPU). Inputs and outputs are float32 on the host."""

    name = "onnx"

    def __init__(self, path: Union[str, Path], device: torch.device, dtype: torch.dtype,
                 intra_op_threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise EncoderUnavailableError("the ONNX encoder needs onnxruntime: pip install onnxruntime") from e
        path = Path(path)
        if not path.is_file():
            raise EncoderUnavailableError(
                f"ONNX encoder file {str(path)!r} not found; write it with `steerseg-export --model <model> --onnx {path}`")
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        if intra_op_threads > 0:
            options.intra_op_num_threads = intra_op_threads
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.device, self.dtype = device, dtype
        outputs = [o.name for o in self.session.get_outputs()]
        if [i.name for i in self.session.get_inputs()] != [ONNX_INPUT] or tuple(outputs) != ONNX_OUTPUTS:
            raise EncoderUnavailableError(f"{str(path)!r} is not a SAM2 encoder written by steerseg-export "
                                          f"(outputs {outputs})")

    def __call__(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        feeds = {ONNX_INPUT: pixel_values.detach().to("cpu", torch.float32).numpy()}
        return [torch.from_numpy(x).to(self.device, self.dtype) for x in self.session.run(list(ONNX_OUTPUTS), feeds)]


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError as e:
        raise EncoderUnavailableError(TENSORRT_MISSING) from e
    if not torch.cuda.is_available():
        raise EncoderUnavailableError("TensorRT needs a CUDA GPU, and torch sees none here; use the ONNX encoder")
    return tensorrt


class TensorRTEncoder:
    """A serialized TensorRT engine built by `build_tensorrt_engine`, run on torch's current
    CUDA stream with torch tensors as its buffers."""

    name = "tensorrt"

    def __init__(self, path: Union[str, Path], dtype: torch.dtype):
        trt = _import_tensorrt()
        path = Path(path)
        if not path.is_file():
            raise EncoderUnavailableError(
                f"TensorRT engine {str(path)!r} not found; build it with `steerseg-export --model <model> --tensorrt {path}`")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise EncoderUnavailableError(f"TensorRT could not load {str(path)!r} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.dtype = dtype

    def __call__(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        pixel_values = pixel_values.to("cuda", torch.float32).contiguous()
        self.context.set_input_shape(ONNX_INPUT, tuple(pixel_values.shape))
        self.context.set_tensor_address(ONNX_INPUT, pixel_values.data_ptr())
        outputs = []
        for name in ONNX_OUTPUTS:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise TrackerError("TensorRT engine execution failed")
        return [o.to(self.dtype) for o in outputs]


def export_onnx(model, path: Union[str, Path]) -> Path:
    """Export the image encoder of `model` (a Sam2VideoModel) to ONNX at `path`, with a dynamic
    batch dimension (input dim 0, output dim 1). Exported in float32 from a float32 copy."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if next(model.parameters()).dtype != torch.float32:
        model = copy.deepcopy(model).float()
    model = model.eval()
    size = model.config.image_size
    # torch.export specialises a dimension traced at size 1, so trace the batch at 2.
    example = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=64)
    with torch.no_grad():
        torch.onnx.export(ImageFeatures(model).eval(), (example,), str(path), dynamo=True,
                          input_names=[ONNX_INPUT], output_names=list(ONNX_OUTPUTS),
                          dynamic_shapes={"pixel_values": {0: batch}}, external_data=False, verbose=False)
    return path


def build_tensorrt_engine(onnx_path: Union[str, Path], engine_path: Union[str, Path], image_size: int,
                          max_batch: int = 4, fp16: bool = True) -> Path:
    """Build a TensorRT engine (FP16 by default) from the ONNX encoder for batches 1..max_batch.
    Raises EncoderUnavailableError where TensorRT or a GPU is missing."""
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TrackerError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shape = (3, image_size, image_size)
    profile.set_shape(ONNX_INPUT, (1, *shape), (1, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TrackerError("TensorRT failed to build the engine (see its log above)")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    return engine_path


def make_encoder(kind: str, model, path: Optional[str], device: torch.device, dtype: torch.dtype):
    """The encoder runner `kind` ("torch", "onnx" or "tensorrt") for `model`."""
    if kind == "torch":
        return TorchEncoder(model)
    if kind == "onnx":
        return OnnxEncoder(path, device, dtype)
    if kind == "tensorrt":
        return TensorRTEncoder(path, dtype)
    raise ValueError(f"unknown encoder {kind!r}")
