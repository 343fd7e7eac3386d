"""Torch devices and dtypes by the names the parameters use (device: auto, cpu, cuda, cuda:1;
dtype: float32, bfloat16, float16), shared by every model the package loads."""
import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str, error: type[Exception] = RuntimeError) -> torch.device:
    """`auto` is the GPU when torch sees one. A CUDA device asked for on a machine without one
    raises `error` (the caller's own error type, so a node reports it as a failed load)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error(f"device {name!r} asked for, but torch sees no CUDA GPU; use device cpu or auto")
    return device
