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
- Confidence in [0, 1] = sigmoid(object score logit) x predicted IoU of the chosen mask: below
  0.5 whenever SAM2 itself says the object is absent.
"""
from __future__ import annotations

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
from transformers.utils import cached_file

from steerseg_ros.buffer import Frame
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

    def validate(self) -> None:
        if not self.model.strip():
            raise ValueError("model must name a SAM2 checkpoint (hub id or folder)")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
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
        """Mean and std from the checkpoint's image processor config (ImageNet's if it has none)."""
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        path = cached_file(self.model_name, "preprocessor_config.json", local_files_only=self.config.local_files_only,
                           _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
        if path:
            with open(path) as f:
                settings = json.load(f)
            mean, std = settings.get("image_mean", mean), settings.get("image_std", std)
            size = settings.get("size", {}).get("height")
            if size and size != self.image_size:
                log.warning("%s: processor size %s differs from the model's image_size %d; using the model's",
                            self.model_name, size, self.image_size)
        as_tensor = lambda v: torch.tensor(v, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)  # noqa: E731
        return as_tensor(mean), as_tensor(std)

    # ---- pre- and post-processing ------------------------------------------------------------
    def _check_frame(self, frame: Frame) -> None:
        image = frame.image
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 \
                or 0 in image.shape:
            raise TrackerError(f"frame {frame.seq}: expected a non-empty HxWx3 uint8 RGB image, got "
                               f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")

    def _preprocess(self, image: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 RGB -> (1, 3, S, S) normalised pixel values: what Sam2ImageProcessor does
        (bilinear antialiased resize of the uint8 image to S x S, rescale, ImageNet normalise),
        with torch's interpolate, the op its torchvision backend calls."""
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None]
        if x.device.type != "cpu":
            x = x.float()  # the antialiased uint8 kernel exists on the CPU only
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                          align_corners=False)
        x = (x.float() / 255.0 - self.mean) / self.std
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
        presence = 1.0 / (1.0 + math.exp(-max(min(object_logit, 50.0), -50.0)))
        return ObjectMask(mask, presence * iou)

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
            results, inputs = {}, None
            for obj_id in sorted(self._live):
                state = self._live[obj_id]
                if state.seq == frame.seq:  # attached after a catch-up that already reached this frame
                    results[obj_id] = state.result
                    continue
                if frame.seq < state.seq:
                    raise TrackerError(f"live frames must come in order: frame {frame.seq} after {state.seq}")
                inputs = inputs or self._input(frame)  # one encoder run for every object
                results[obj_id] = self._advance(state, frame, inputs)
            return results

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
