"""SAM2 tracking backend: transformers' Sam2VideoModel streamed one frame at a time.

Owns `Sam2TrackerConfig`, `Sam2Tracker` and `Sam2ObjectState`: loading SAM2 / SAM2.1 checkpoints
(hub id or local folder), pre- and post-processing (without torchvision, which the SAM2
processors need), the per-object memory bank and its pruning, and per-object confidence.

How SAM2 maps onto the `Tracker` interface:
- Every object has its own `Sam2VideoInferenceSession`. Adding, replacing or removing an object
  therefore touches nothing of the others, and a detached object catches up in the grounding
  thread while the live ones step in the camera thread: they share only the model's weights
  (read-only) and the image features (a small locked cache).
- A session numbers its frames 0, 1, 2, ... in the order they are fed, whatever their sequence
  numbers: SAM2 reads its memory at fixed offsets before the current index, so the previous
  frame fed is always the most recent memory, also when the caller skips frames (keyframes,
  frames lost from the buffer) or walks backwards (tracklets propagated back over keyframes,
  which SAM2 itself would do in reverse mode with the same offsets mirrored).
- The image encoder, the expensive part, runs once per frame: its output goes into a bounded
  cache keyed by frame, and from there into each session's own feature cache before the model
  is called, so the model never encodes a frame a second time. An added object costs memory
  attention, the mask decoder and the memory encoder only.
- Bounded memory: after each call a session keeps only what the model reads again (the
  conditioning frame, the memory features of the last num_maskmem - 1 frames and the object
  pointers of the last max_object_pointers_in_encoder - 1 frames); the pixel values, high-
  resolution masks and older outputs are dropped. Frame indices are always passed explicitly,
  as the session would otherwise number frames by how many it holds.
- The feature cache holds the encoder output of the last `feature_cache_frames` frames (about
  17 MB each for SAM2 at 1024 px in float32): keyframes prompted with several points and
  propagated over by every candidate tracklet are encoded once, not once per candidate.
- Objects batched: a live step groups the objects whose memory banks are equally long (same
  number of memory frames and object pointers; all of them once every object has been live for
  max_object_pointers_in_encoder frames) and runs each group through memory attention, the mask
  decoder and the memory encoder as one batch, writing each object's outputs back into its own
  session. Grouping rather than padding keeps the arithmetic that of the per-object path (no
  attention mask, no padded keys); `batch_objects=False` keeps the per-object path.
- Confidence in [0, 1] = sigmoid(object score logit) x predicted IoU of the chosen mask: below
  0.5 whenever SAM2 itself says the object is absent.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Sam2VideoInferenceSession, Sam2VideoModel
from transformers.models.sam2_video.modeling_sam2_video import NO_OBJ_SCORE
from transformers.utils import cached_file

from steerseg_ros.frame import Frame
from steerseg_ros.grounding.base import ModelUnavailableError
from steerseg_ros.tracking.base import MaskCandidate, ObjectMask, ObjectState, Tracker, TrackerError
from steerseg_ros.tracking.sam2_encoder import make_encoder, position_encodings
from steerseg_ros.tracking.sam2_reference import match_reference

log = logging.getLogger("steerseg_ros.tracking.sam2")

# Short names for the published checkpoints.
MODEL_ALIASES = {
    "tiny": "facebook/sam2.1-hiera-tiny",
    "small": "facebook/sam2.1-hiera-small",
    "base-plus": "facebook/sam2.1-hiera-base-plus",
    "large": "facebook/sam2.1-hiera-large",
    "sam2-tiny": "facebook/sam2-hiera-tiny",
    "sam2-small": "facebook/sam2-hiera-small",
    "sam2-base-plus": "facebook/sam2-hiera-base-plus",
    "sam2-large": "facebook/sam2-hiera-large",
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ENCODERS = ("torch", "onnx", "tensorrt")
AUTOCAST = {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
# What compile=True compiles: the image encoder and the modules every object step runs.
COMPILED_MODULES = ("vision_encoder", "memory_attention", "mask_decoder", "memory_encoder")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Each session holds one object; its id inside the session is arbitrary.
_SESSION_OBJ = 1


@dataclass
class Sam2TrackerConfig:
    model: str = field(default="facebook/sam2.1-hiera-tiny", metadata={
        "help": "SAM2 / SAM2.1 checkpoint: a hub id (facebook/sam2.1-hiera-tiny, -small, -base-plus, "
                "-large), one of the short names tiny, small, base-plus, large (SAM2.1) or sam2-tiny... "
                "(SAM2), or a local folder holding config.json and model.safetensors"})
    device: str = field(default="auto", metadata={"help": "torch device: auto (cuda when available), cpu, cuda, cuda:N"})
    dtype: str = field(default="float32", metadata={"help": "model dtype: float32, bfloat16 or float16 (GPU)"})
    local_files_only: bool = field(default=False, metadata={
        "help": "never contact the model hub; load from the local cache or folder only"})
    encoder: str = field(default="torch", metadata={
        "help": "image encoder runtime: torch, onnx (onnxruntime, file from steerseg-export --onnx) or "
                "tensorrt (FP16 engine from steerseg-export --tensorrt; needs TensorRT and a GPU)"})
    encoder_file: str = field(default="", metadata={"help": "the .onnx file or TensorRT engine for encoder onnx / tensorrt"})
    prune_memory: bool = field(default=True, metadata={
        "help": "drop memory SAM2 no longer reads (bounded memory); false keeps everything, as upstream does"})
    max_objects: int = field(default=16, metadata={"help": "most live objects at once (attach beyond it fails)"})
    feature_cache_frames: int = field(default=8, metadata={
        "help": "image features kept for reuse, by frame (keyframes prompted several times, catch-up "
                "reaching the live frame)"})
    mask_threshold: float = field(default=0.0, metadata={"help": "mask logit threshold"})
    autocast: str = field(default="none", metadata={
        "help": "mixed precision for SAM2's steps (torch.autocast): none, bfloat16 or float16; weights stay "
                "in dtype. On a GPU bfloat16 is the usual choice; on a CPU bfloat16 runs where the CPU has it"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the image encoder, memory attention, mask decoder and memory encoder; they are "
                "compiled and warmed up when the tracker is built (node configure), not on the camera path"})
    compile_encoder: bool = field(default=True, metadata={
        "help": "with compile: the image encoder too (its tracing takes the longest: about 20 minutes on 2 CPU "
                "cores against seconds for the per-object modules); false compiles only the per-object modules. "
                "An encoder running in onnx or tensorrt is never compiled"})
    compile_backend: str = field(default="inductor", metadata={
        "help": "torch.compile backend: inductor (generated kernels; minutes to build on a small CPU), "
                "cudagraphs, aot_eager or eager (traced graphs run eagerly: checks the tracing, no speed-up)"})
    batch_objects: bool = field(default=True, metadata={
        "help": "step all live objects through memory attention, mask decoder and memory encoder as one "
                "batch per group of objects with equally long memories; false runs them one by one"})

    def validate(self) -> None:
        if not self.model.strip():
            raise ValueError("model must name a SAM2 checkpoint (hub id or folder)")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.autocast not in AUTOCAST:
            raise ValueError(f"autocast must be one of {list(AUTOCAST)}, got {self.autocast!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {list(ENCODERS)}, got {self.encoder!r}")
        if self.encoder != "torch" and not self.encoder_file:
            raise ValueError(f"encoder {self.encoder} needs encoder_file (write it with steerseg-export)")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as e:
                raise ValueError(f"device {self.device!r} is not a torch device: {e}") from e
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")
        if self.feature_cache_frames < 1:
            raise ValueError(f"feature_cache_frames must be >= 1, got {self.feature_cache_frames}")


def resolve_model(name: str) -> str:
    """The hub id or folder a config's `model` names."""
    return MODEL_ALIASES.get(name.strip(), name.strip())


def missing_weights_message(name: str, error: Exception) -> str:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    # A hub id is "owner/name"; anything else is meant as a folder.
    if os.path.isdir(name) or name.startswith((".", "/", "~")) or name.count("/") != 1:
        return (f"SAM2 checkpoint folder {name!r} could not be loaded ({reason}). It must hold config.json "
                f"and model.safetensors, e.g. from `hf download facebook/sam2.1-hiera-tiny --local-dir {name}`.")
    return (f"SAM2 model {name!r} is not available: its weights are not in the local Hugging Face cache and "
            f"could not be downloaded ({reason}). Download them where the hub is reachable with "
            f"`hf download {name}` (then copy ~/.cache/huggingface/hub to this machine) or "
            f"`hf download {name} --local-dir DIR` and set tracker.model to DIR. Published checkpoints: "
            f"facebook/sam2.1-hiera-tiny, -small, -base-plus, -large.")


def load_model(name: str, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
               local_files_only: bool = False) -> Sam2VideoModel:
    """A Sam2VideoModel from a hub id, short name or folder, in eval mode on `device`. Raises
    ModelUnavailableError, saying how to get the weights, when they are not there."""
    name = resolve_model(name)
    try:
        model = Sam2VideoModel.from_pretrained(name, dtype=dtype, local_files_only=local_files_only)
    except OSError as e:
        raise ModelUnavailableError(missing_weights_message(name, e)) from e
    # Mask prompts as Meta's reference code treats them (tracking/sam2_reference.py).
    return match_reference(model.to(device).eval())


class Sam2ObjectState(ObjectState):
    """One object: its own inference session (memory bank), the session's index of the last
    frame fed to it, and the frame size it was seeded on."""

    def __init__(self, seq: int, result: ObjectMask, session: Sam2VideoInferenceSession,
                 owner: "Sam2Tracker", size: tuple[int, int]):
        super().__init__(seq, result)
        self.session = session
        self.owner = owner
        self.size = size
        self.index = 0


class _Features:
    """One frame's encoder output, in the layout the sessions cache, and the image it came from."""

    def __init__(self, image: np.ndarray, vision: dict):
        self.image = image
        self.vision = vision


class _FrameInput:
    """What a model call on one frame takes: the pixel values (the streaming call stores them,
    although with the features cached it never encodes them) and the features."""

    def __init__(self, pixel_values: torch.Tensor, features: _Features):
        self.pixel_values = pixel_values
        self.features = features


class Sam2Tracker(Tracker):
    """Streaming SAM2 (see the module docstring). Thread-safe as the Tracker contract requires."""

    name = "sam2"

    def __init__(self, config: Optional[Sam2TrackerConfig] = None):
        self.config = config or Sam2TrackerConfig()
        self.config.validate()
        self.device = self._resolve_device(self.config.device)
        self.dtype = DTYPES[self.config.dtype]
        self.model_name = resolve_model(self.config.model)
        self.model = load_model(self.model_name, self.dtype, self.device, self.config.local_files_only)
        self.image_size = int(self.model.config.image_size)
        self.mean, self.std = self._normalization()
        self.encoder = make_encoder(self.config.encoder, self.model, self.config.encoder_file, self.device, self.dtype)
        self._pos = position_encodings(self.model, self.device, self.dtype)
        # What each memory-conditioned step reads back, counted in frames before the current one.
        self.memory_frames = max(self.model.num_maskmem - 1, 0)
        self.pointer_frames = max(self.model.config.max_object_pointers_in_encoder - 1, 0)
        # The video forward does not return the mask decoder's predicted IoU; a forward hook
        # records it per thread (detached objects and live ones run in different threads).
        self._tls = threading.local()
        self._hook = self.model.mask_decoder.register_forward_hook(self._record_decoder)
        self._cache: OrderedDict[int, _Features] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._live: dict[int, Sam2ObjectState] = {}
        self._live_lock = threading.RLock()
        self.stats: Counter = Counter()
        self.autocast_dtype = AUTOCAST[self.config.autocast]
        if self.config.compile:
            self._compile()

    # ---- GPU paths: autocast, compile ------------------------------------------------------------
    def _precision(self):
        """The autocast context of a model call (a no-op without autocast)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _compile(self) -> None:
        """Compile the per-step modules' forward (hooks stay outside the graph) with dynamic
        shapes (the batch of objects and the memory length vary), then warm them up on a
        synthetic clip: compilation takes seconds to minutes and must not hit the first live
        frames."""
        for name in COMPILED_MODULES:
            if name == "vision_encoder" and (not self.config.compile_encoder or self.config.encoder != "torch"):
                continue
            module = getattr(self.model, name)
            module.forward = torch.compile(module.forward, dynamic=True, backend=self.config.compile_backend)
        self.warm_up()

    def warm_up(self, objects: int = 2, frames: int = 4) -> None:
        """Step `objects` objects over a few synthetic frames at the model's input size (runs
        every compiled or lazily initialised path once), then forget them."""
        size = self.image_size
        ys, xs = np.mgrid[0:size, 0:size]
        clip = [Frame(i - frames - 1, 0, np.stack([(xs + 9 * i) % 256, ys % 256, (xs + ys) % 256], -1).astype(np.uint8))
                for i in range(frames + 1)]
        with self._live_lock:
            saved, self._live = self._live, {}
            try:
                for k in range(objects):
                    seed = np.zeros((size, size), bool)
                    seed[size // 4: size // 2, k * size // (2 * objects): (k + 1) * size // (2 * objects)] = True
                    self._live[k] = self.start(clip[0], mask=seed)
                for frame in clip[1:]:
                    self.step(frame)
            finally:
                self._live = saved
        with self._cache_lock:
            for frame in clip:
                self._cache.pop(frame.seq, None)

    # ---- loading ---------------------------------------------------------------------------
    @staticmethod
    def _resolve_device(name: str) -> torch.device:
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise TrackerError(f"device {name!r} asked for, but torch sees no CUDA GPU; use device cpu or auto")
        return device

    def _normalization(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std from the checkpoint's image processor config (ImageNet's if it has none),
        with its rescale factor folded in as transformers' processor folds it: each float32
        constant times 1 / rescale_factor, so pixels in 0..255 are normalised in one step."""
        mean, std, rescale = IMAGENET_MEAN, IMAGENET_STD, 1 / 255
        path = cached_file(self.model_name, "preprocessor_config.json", local_files_only=self.config.local_files_only,
                           _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
        if path:
            with open(path) as f:
                settings = json.load(f)
            mean, std = settings.get("image_mean", mean), settings.get("image_std", std)
            rescale = settings.get("rescale_factor", rescale)
            size = settings.get("size", {}).get("height")
            if size and size != self.image_size:
                log.warning("%s: processor size %s differs from the model's image_size %d; using the model's",
                            self.model_name, size, self.image_size)
        # The processor's _fuse_mean_std_and_rescale_factor: float32 constants, then the product.
        fused = lambda v: (torch.tensor(v, dtype=torch.float32, device=self.device)  # noqa: E731
                           * (1.0 / rescale)).view(1, 3, 1, 1)
        return fused(mean), fused(std)

    # ---- pre- and post-processing ------------------------------------------------------------
    def _check_frame(self, frame: Frame) -> None:
        image = frame.image
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 \
                or 0 in image.shape:
            raise TrackerError(f"frame {frame.seq}: expected a non-empty HxWx3 uint8 RGB image, got "
                               f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")

    def _preprocess(self, image: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 RGB -> (1, 3, S, S) normalised pixel values, bit for bit what transformers'
        SAM2 processors (Sam2ImageProcessor, Sam2VideoVideoProcessor; transformers 5.23) compute
        from the same frame on the same device:
        - the channel-first uint8 image resized to S x S as torchvision's resize does it
          (bilinear, antialiased): with the native uint8 kernel on a CPU with AVX2 or AVX512,
          otherwise (GPU, other CPUs) in float32 and rounded back to uint8;
        - rescale and normalise fused into (x - mean/rescale) / (std/rescale) in float32, i.e.
          (x - 255 mean) / (255 std), not (x/255 - mean) / std: the two differ by a rounding step
          that random and real weights alike can amplify into different masks.
        Written here because the processors need torchvision, which this package cannot depend on."""
        array = np.ascontiguousarray(image)
        if not array.flags.writeable:
            array = array.copy()  # torch.from_numpy warns about read-only memory (e.g. a ROS message buffer)
        x = torch.from_numpy(array)
        if self.device.type == "cuda":
            # Through page-locked memory: the copy to the GPU then runs asynchronously.
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = x.permute(2, 0, 1).contiguous().to(self.device)[None]
        size = (self.image_size, self.image_size)
        if tuple(x.shape[-2:]) != size:
            if x.device.type == "cpu" and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
                x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
            else:
                x = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
                x = x.round_().to(torch.uint8)
        x = (x.to(torch.float32) - self.mean) / self.std
        return x.to(self.dtype)

    def _to_image(self, logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """(K, h, w) low-resolution mask logits -> (K, H, W) bool masks at the frame size."""
        up = F.interpolate(logits[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
        return (up > self.config.mask_threshold).cpu().numpy()

    def _points(self, points: np.ndarray, labels: np.ndarray, size: tuple[int, int]) -> dict:
        points = np.asarray(points, dtype=np.float64)
        labels = np.asarray(labels)
        if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
            raise TrackerError(f"points must be (N>=1, 2) pixel (x, y), got shape {points.shape}")
        if labels.shape != (len(points),):
            raise TrackerError(f"labels must be ({len(points)},), got shape {labels.shape}")
        if not np.isfinite(points).all():
            raise TrackerError("points must be finite")
        if not np.isin(labels, (0, 1)).all():
            raise TrackerError(f"labels must be 1 (positive) or 0 (negative), got {sorted(set(labels.tolist()))}")
        height, width = size
        scaled = points * (self.image_size / width, self.image_size / height)
        return {"point_coords": torch.tensor(scaled, dtype=torch.float32, device=self.device)[None, None],
                "point_labels": torch.tensor(labels, dtype=torch.int32, device=self.device)[None, None]}

    def _mask_input(self, mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        mask = np.asarray(mask)
        if mask.shape != size:
            raise TrackerError(f"seed mask is {mask.shape}, the frame {size}")
        if not mask.any():
            raise TrackerError("seed mask is empty")
        # As Sam2VideoProcessor does: antialiased resize to the model's input size, then >= 0.5.
        x = torch.from_numpy(mask.astype(np.float32)).to(self.device)[None, None]
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                          align_corners=False)
        return (x >= 0.5).float()

    # ---- features ----------------------------------------------------------------------------
    def _input(self, frame: Frame) -> _FrameInput:
        """The frame's pixel values and image features, the features encoded once and shared
        (cached by sequence number; a hit must also be the very same image array, so a reused
        number never matches)."""
        self._check_frame(frame)
        with torch.inference_mode():
            pixel_values = self._preprocess(frame.image)
            with self._cache_lock:
                hit = self._cache.get(frame.seq)
                if hit is not None and hit.image is frame.image:
                    self._cache.move_to_end(frame.seq)
                    return _FrameInput(pixel_values, hit)
            with self._precision():
                maps = self.encoder(pixel_values)
        entry = _Features(frame.image, {"vision_feats": maps, "vision_pos_embeds": self._pos})
        with self._cache_lock:
            self._cache[frame.seq] = entry
            self._cache.move_to_end(frame.seq)
            while len(self._cache) > self.config.feature_cache_frames:
                self._cache.popitem(last=False)
            self.stats["encoder_runs"] += 1
        return _FrameInput(pixel_values, entry)

    # ---- one object, one frame -------------------------------------------------------------------
    def _record_decoder(self, module, args, output) -> None:
        self._tls.decoder = output

    def _new_session(self, frame: Frame) -> Sam2VideoInferenceSession:
        return Sam2VideoInferenceSession(
            video_height=frame.height, video_width=frame.width, inference_device=self.device,
            inference_state_device=self.device, video_storage_device=self.device, dtype=self.dtype)

    def _call(self, session: Sam2VideoInferenceSession, index: int, inputs: _FrameInput,
              run_mem_encoder: bool = True):
        session.cache.cache_vision_features(index, inputs.features.vision)
        self._tls.decoder = None
        with self._precision():
            output = self.model(inference_session=session, frame=inputs.pixel_values, frame_idx=index,
                                run_mem_encoder=run_mem_encoder)
        return output, self._tls.decoder

    def _run(self, session: Sam2VideoInferenceSession, index: int, frame: Frame,
             inputs: Optional[_FrameInput] = None, mask_seed: bool = False) -> ObjectMask:
        """Propagate a session's object onto `frame`, its frame number `index` (or segment it
        there on its seed frame)."""
        output, decoder = self._call(session, index, inputs or self._input(frame))
        object_logit = float(output.object_score_logits.reshape(-1)[0])
        if mask_seed or decoder is None:
            iou = 1.0  # the model takes a mask prompt as the output itself
        else:
            iou = float(decoder[1].reshape(-1).max().clamp(0, 1))
        mask = self._to_image(output.pred_masks[:, 0], (frame.height, frame.width))[0]
        if self.config.prune_memory:
            self._prune(session, index)
        with self._cache_lock:
            self.stats["object_steps"] += 1
        return ObjectMask(mask, _presence(object_logit) * iou)

    def _prune(self, session: Sam2VideoInferenceSession, index: int) -> None:
        """Drop what no later step reads (see the module docstring). The next step, at index + 1,
        reads memory features at ages 0 .. memory_frames - 1 and object pointers at ages
        0 .. pointer_frames - 1 (age = index - frame index), plus every conditioning frame."""
        session.processed_frames.clear()  # features come from our cache; pixels are never re-read
        session.cache.clear_all()
        horizon = max(self.memory_frames, self.pointer_frames)
        for obj_idx, outputs in session.output_dict_per_obj.items():
            tracked = outputs["non_cond_frame_outputs"]
            for f in list(tracked):
                age = index - f
                if age >= horizon:
                    del tracked[f]
                    continue
                tracked[f].pop("high_res_masks", None)
                tracked[f].pop("pred_masks", None)
                if age >= self.memory_frames:
                    tracked[f].pop("maskmem_features", None)
                    tracked[f].pop("maskmem_pos_enc", None)
            for out in outputs["cond_frame_outputs"].values():
                out.pop("high_res_masks", None)
            frames = session.frames_tracked_per_obj[obj_idx]
            for f in [f for f in frames if index - f >= horizon]:
                del frames[f]
            if session.obj_idx_to_id(obj_idx) not in session.obj_with_new_inputs:
                # Prompts are read only on the frame they were given on.
                session.point_inputs_per_obj[obj_idx].clear()
                session.mask_inputs_per_obj[obj_idx].clear()

    # ---- many objects, one frame (batched) -----------------------------------------------------
    def _memory(self, session: Sam2VideoInferenceSession, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One object's memory for the step onto `index`, as the model's memory-conditioned step
        builds it (its own helpers): (M, 1, C) memory tokens, their position encodings, and how
        many of them are object pointers (the last ones, which get no rotary encoding)."""
        model, device = self.model, self.device
        previous = model._gather_memory_frame_outputs(session, 0, index, False)
        memories, positions = model._build_memory_attention_inputs(previous, device)
        offsets, pointers, most = model._get_object_pointers(session, 0, index, None, device, False, True)
        count = 0
        if pointers:
            tokens, encoding = model._process_object_pointers(offsets, pointers, most, 1, model.hidden_dim, device)
            memories.append(tokens)
            positions.append(encoding)
            count = tokens.shape[0]
        return torch.cat(memories, dim=0).to(self.dtype), torch.cat(positions, dim=0), count

    def _decode(self, conditioned: torch.Tensor, high_res: list[torch.Tensor]):
        """The mask decoder on B memory-conditioned feature maps without prompts, as the model's
        tracking step runs it for one object; written out because the model's own single-frame
        forward picks the best of several masks correctly for a batch of one only. Returns the
        chosen low- and high-resolution mask logits (B, 1, h, w), object pointers (B, 1, C), object
        score logits (B, 1, 1) and predicted IoUs (B, K), shaped as the per-object step stores them."""
        model = self.model
        batch = conditioned.shape[0]
        multimask = model._use_multimask(False, None)
        # No prompt: one padding point labelled -1, as the model feeds a tracked frame.
        points = torch.zeros(batch, 1, 1, 2, dtype=conditioned.dtype, device=conditioned.device)
        labels = -torch.ones(batch, 1, 1, dtype=torch.int32, device=conditioned.device)
        sparse, dense = model.prompt_encoder(input_points=points, input_labels=labels, input_boxes=None,
                                             input_masks=None)
        image_pe = model.get_image_wide_positional_embeddings().repeat(batch, 1, 1, 1)
        low, iou, tokens, object_logits = model.mask_decoder(
            image_embeddings=conditioned, image_positional_embeddings=image_pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=multimask, high_resolution_features=high_res)
        low, iou, tokens = low[:, 0], iou[:, 0], tokens[:, 0]  # the one prompt of each batch entry
        present = object_logits > 0  # (B, 1, 1)
        low = torch.where(present[..., None], low, NO_OBJ_SCORE)
        # All candidates upsampled before choosing, as the model does: the kernel's result for one
        # channel depends (in the last bits) on how many it processes, and a tracked object's
        # memory carries such differences on.
        high = F.interpolate(low.float(), size=(self.image_size, self.image_size), mode="bilinear",
                             align_corners=False).to(low.dtype)
        rows = torch.arange(batch, device=low.device)
        best = iou.argmax(dim=-1) if multimask else torch.zeros(batch, dtype=torch.long, device=low.device)
        low, high = low[rows, best][:, None], high[rows, best][:, None]
        token = tokens[rows, best] if multimask and tokens.shape[1] > 1 else tokens[:, 0]
        pointer = model.object_pointer_proj(token)[:, None]
        weight = present.to(pointer.dtype)
        pointer = weight * pointer + (1 - weight) * model.no_object_pointer
        return low, high, pointer, object_logits, iou

    def _run_batch(self, states: list[Sam2ObjectState], built: list[tuple], frame: Frame,
                   inputs: _FrameInput) -> list[ObjectMask]:
        """Step objects with equally long memories (`built` by `_memory`) onto `frame` as one batch
        (their next index each), writing every object's outputs into its own session as the
        per-object call does."""
        model, batch = self.model, len(states)
        feats = inputs.features.vision["vision_feats"]
        indices = [s.index + 1 for s in states]
        memory = torch.cat([m for m, _, _ in built], dim=1)
        memory_pos = torch.cat([p for _, p, _ in built], dim=1)
        top = feats[-1].expand(-1, batch, -1)
        # (HW, 1, C) shared features -> (B, C, H, W) maps for the decoder's skip connections.
        high_res = [x.permute(1, 2, 0).reshape(1, x.shape[2], *size).expand(batch, -1, -1, -1)
                    for x, size in zip(feats[:-1], model.backbone_feature_sizes[:-1])]
        conditioned = model.memory_attention(current_vision_features=top,
                                             current_vision_position_embeddings=self._pos[-1].expand(-1, batch, -1),
                                             memory=memory, memory_posision_embeddings=memory_pos,
                                             num_object_pointer_tokens=built[0][2])
        height, width = model.backbone_feature_sizes[-1]
        conditioned = conditioned[0].transpose(1, 2).reshape(batch, model.hidden_dim, height, width)
        low, high, pointer, object_logits, iou = self._decode(conditioned, high_res)
        mem_features, mem_pos = model._encode_new_memory(current_vision_feats=top, pred_masks_high_res=high,
                                                         object_score_logits=object_logits, is_mask_from_pts=False)
        for k, (state, index) in enumerate(zip(states, indices)):
            session = state.session
            # What the model's own call keeps of the frame (pruning drops it again).
            session.add_new_frame(inputs.pixel_values, index)
            session.cache.cache_vision_features(index, inputs.features.vision)
            # Copies, so that no object's memory keeps the whole batch's storage alive.
            session.store_output(0, index, output_value={
                "pred_masks": low[k:k + 1].clone(), "object_pointer": pointer[k:k + 1].clone(),
                "high_res_masks": high[k:k + 1].clone(), "object_score_logits": object_logits[k:k + 1].clone(),
                "maskmem_features": mem_features[:, k:k + 1].clone(), "maskmem_pos_enc": mem_pos[:, k:k + 1].clone(),
            }, is_conditioning_frame=False)
            session.frames_tracked_per_obj[0][index] = {"reverse": False}
        masks = self._to_image(low[:, 0], (frame.height, frame.width))
        # One transfer for all scores, combined as the per-object path does (in double precision).
        logits = object_logits.reshape(-1).float().tolist()
        best_iou = iou.float().amax(dim=-1).clamp(0, 1).tolist()
        scores = [_presence(logit) * q for logit, q in zip(logits, best_iou)]
        results = []
        for k, (state, index) in enumerate(zip(states, indices)):
            if self.config.prune_memory:
                self._prune(state.session, index)
            state.index = index
            state.seq, state.result = frame.seq, ObjectMask(masks[k], scores[k])
            results.append(state.result)
        with self._cache_lock:
            self.stats["object_steps"] += batch
            self.stats["batched_steps"] += 1
        return results

    def _step_batched(self, states: dict[int, Sam2ObjectState], frame: Frame, inputs: _FrameInput) -> dict[int, ObjectMask]:
        """Group the objects by the shape of their memory (memory tokens, object pointers) and
        step each group as one batch."""
        for obj_id, state in states.items():
            if (frame.height, frame.width) != state.size:
                raise TrackerError(f"frame {frame.seq} is {frame.width}x{frame.height}; object {obj_id} was "
                                   f"seeded on {state.size[1]}x{state.size[0]} frames")
        built = {obj_id: self._memory(state.session, state.index + 1) for obj_id, state in states.items()}
        groups: dict[tuple[int, int], list[int]] = {}
        for obj_id, (memory, _, pointers) in built.items():
            groups.setdefault((memory.shape[0], pointers), []).append(obj_id)
        results = {}
        for ids in groups.values():
            done = self._run_batch([states[i] for i in ids], [built[i] for i in ids], frame, inputs)
            results.update(zip(ids, done))
        return results

    # ---- Tracker interface -----------------------------------------------------------------------
    def segment(self, frame: Frame, points: np.ndarray, labels: np.ndarray) -> list[MaskCandidate]:
        """SAM2's masks for one point prompt on one frame, best predicted IoU first: three for a
        single point (SAM2's multimask output), one for several points (as SAM2 decides). Masks
        are the decoder's, before the object-presence gate, as SAM2's image predictor returns them."""
        self._check_frame(frame)
        size = (frame.height, frame.width)
        prompt = self._points(points, labels, size)
        session = self._new_session(frame)
        obj_idx = session.obj_id_to_idx(_SESSION_OBJ)
        session.add_point_inputs(obj_idx, 0, prompt)
        session.obj_with_new_inputs = [_SESSION_OBJ]
        with torch.inference_mode():
            _, decoder = self._call(session, 0, self._input(frame), run_mem_encoder=False)
        logits, iou = decoder[0][0, 0], decoder[1][0, 0].float().clamp(0, 1)
        masks = self._to_image(logits, size)
        order = torch.argsort(iou, descending=True).tolist()
        return [MaskCandidate(masks[i], float(iou[i])) for i in order]

    def start(self, frame: Frame, *, points: Optional[np.ndarray] = None, labels: Optional[np.ndarray] = None,
              mask: Optional[np.ndarray] = None) -> Sam2ObjectState:
        self._check_frame(frame)
        size = (frame.height, frame.width)
        if (mask is None) == (points is None):
            raise TrackerError("seed an object with either points (and labels) or a mask")
        session = self._new_session(frame)
        obj_idx = session.obj_id_to_idx(_SESSION_OBJ)
        if mask is not None:
            session.add_mask_inputs(obj_idx, 0, self._mask_input(mask, size))
        else:
            if labels is None:
                raise TrackerError("points need labels (1 positive, 0 negative)")
            session.add_point_inputs(obj_idx, 0, self._points(points, labels, size))
        session.obj_with_new_inputs = [_SESSION_OBJ]
        result = self._run(session, 0, frame, mask_seed=mask is not None)
        return Sam2ObjectState(frame.seq, result, session, self, size)

    def _check_state(self, state: ObjectState) -> Sam2ObjectState:
        if not isinstance(state, Sam2ObjectState) or state.owner is not self:
            raise TrackerError("this object state was not made by this tracker's start()")
        return state

    def _advance(self, state: Sam2ObjectState, frame: Frame, inputs: Optional[_FrameInput] = None) -> ObjectMask:
        if (frame.height, frame.width) != state.size:
            raise TrackerError(f"frame {frame.seq} is {frame.width}x{frame.height}; the object was seeded "
                               f"on {state.size[1]}x{state.size[0]} frames")
        result = self._run(state.session, state.index + 1, frame, inputs)
        state.index += 1
        state.seq, state.result = frame.seq, result
        return result

    def advance(self, state: ObjectState, frame: Frame) -> ObjectMask:
        """Propagate a detached object to `frame`, whichever frame the caller feeds next (later
        buffered frames, or keyframes forward or backward); only the same frame twice is refused."""
        state = self._check_state(state)
        if frame.seq == state.seq:
            raise TrackerError(f"the object is already on frame {frame.seq}")
        return self._advance(state, frame)

    def attach(self, obj_id: int, state: ObjectState) -> None:
        state = self._check_state(state)
        with self._live_lock:
            for other_id, other in self._live.items():
                if other is state and other_id != obj_id:
                    raise TrackerError(f"this object is already live as {other_id}")
            if obj_id not in self._live and len(self._live) >= self.config.max_objects:
                raise TrackerError(f"already tracking {len(self._live)} objects (max_objects)")
            self._live[obj_id] = state

    def remove(self, obj_id: int) -> None:
        with self._live_lock:
            self._live.pop(obj_id, None)

    def step(self, frame: Frame) -> dict[int, ObjectMask]:
        with self._live_lock:
            if not self._live:
                return {}
            results, due = {}, {}
            for obj_id in sorted(self._live):
                state = self._live[obj_id]
                if state.seq == frame.seq:  # attached after a catch-up that already reached this frame
                    results[obj_id] = state.result
                    continue
                if frame.seq < state.seq:
                    raise TrackerError(f"live frames must come in order: frame {frame.seq} after {state.seq}")
                due[obj_id] = state
            if not due:
                return results
            inputs = self._input(frame)  # one encoder run for every object
            if self.config.batch_objects:
                with torch.inference_mode(), self._precision():
                    results.update(self._step_batched(due, frame, inputs))
            else:
                for obj_id, state in due.items():
                    results[obj_id] = self._advance(state, frame, inputs)
            return {obj_id: results[obj_id] for obj_id in sorted(results)}

    @property
    def object_ids(self) -> list[int]:
        with self._live_lock:
            return sorted(self._live)

    def reset(self) -> None:
        with self._live_lock:
            self._live.clear()
        with self._cache_lock:
            self._cache.clear()

    def close(self) -> None:
        self.reset()
        self._hook.remove()

    # ---- introspection ----------------------------------------------------------------------------
    def memory_bytes(self) -> int:
        """Bytes of tensor storage the tracker holds for its live objects and feature cache."""
        with self._live_lock:
            sessions = [s.session for s in self._live.values()]
        with self._cache_lock:
            cached = list(self._cache.values())
        return tensor_bytes([_session_parts(s) for s in sessions] + [f.vision for f in cached])


def _presence(object_logit: float) -> float:
    """SAM2's object score logit as a probability."""
    return 1.0 / (1.0 + math.exp(-max(min(object_logit, 50.0), -50.0)))


def _session_parts(session: Sam2VideoInferenceSession):
    return (session.processed_frames, session.cache._vision_features, session.output_dict_per_obj,
            session.point_inputs_per_obj, session.mask_inputs_per_obj)


def tensor_bytes(obj) -> int:
    """Bytes of the distinct tensor storages reachable through dicts, lists and tuples."""
    seen: dict[int, int] = {}
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return sum(seen.values())
