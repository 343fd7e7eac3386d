"""SAM2 tracking backend: transformers' Sam2VideoModel streamed one frame at a time.

Owns `Sam2TrackerConfig`, `Sam2Tracker` and `Sam2ObjectState`: loading SAM2 / SAM2.1 checkpoints
(hub id or local folder), the per-object sessions, the live objects and per-object confidence.
Its parts live beside it: sam2_inputs (pre- and post-processing without torchvision, which the
SAM2 processors need, and the feature cache), sam2_memory (a session's memory bank and its
pruning), sam2_batched (the batched step's arithmetic) and sam2_encoder (the image encoder).

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
- Confidence in [0, 1] = sigmoid(object score logit) x predicted IoU of the chosen mask while
  SAM2's occlusion head says the object is visible (logit > 0); where it says "not visible" the
  mask is empty and the score 0, as SAM2's own video predictor outputs (sam2_inputs.tracked_result),
  so that the pipeline publishes nothing and the track goes LOST after lost_timeout_s.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from transformers import Sam2VideoInferenceSession, Sam2VideoModel

from steerseg_ros.devices import DTYPES
from steerseg_ros.frame import Frame
from steerseg_ros.grounding.base import ModelUnavailableError
from steerseg_ros.tracking.base import MaskCandidate, ObjectMask, ObjectState, Tracker, TrackerError
from steerseg_ros.tracking.sam2_batched import step_batch
from steerseg_ros.tracking.sam2_encoder import make_encoder, position_encodings
# IMAGENET_MEAN and IMAGENET_STD are read from here by sam2_checkpoints.
from steerseg_ros.tracking.sam2_inputs import (IMAGENET_MEAN, IMAGENET_STD, Sam2FrameInputs,  # noqa: F401
                                               _Features, _FrameInput, processor_normalization, tracked_result)
from steerseg_ros.tracking.sam2_memory import memory_inputs, prune_session, session_parts, store_step, tensor_bytes
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
ENCODERS = ("torch", "onnx", "tensorrt")
AUTOCAST = {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
# What compile=True compiles: the image encoder and the modules every object step runs.
COMPILED_MODULES = ("vision_encoder", "memory_attention", "mask_decoder", "memory_encoder")
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


class Sam2Tracker(Sam2FrameInputs, Tracker):
    """Streaming SAM2 (see the module docstring). Thread-safe as the Tracker contract requires."""

    name = "sam2"
    # What another model of SAM2's architecture changes to run through this same code
    # (tracking/sam3.py): its session class, the normalisation its checkpoints default to when
    # they hold no processor config, and _resolve_model / _load_model.
    session_class = Sam2VideoInferenceSession
    default_normalization = (IMAGENET_MEAN, IMAGENET_STD)

    def __init__(self, config: Optional[Sam2TrackerConfig] = None):
        self.config = config or Sam2TrackerConfig()
        self.config.validate()
        self.device = self._resolve_device(self.config.device)
        self.dtype = DTYPES[self.config.dtype]
        self.model_name = self._resolve_model(self.config.model)
        self.model = self._load_model()
        self.image_size = int(self.model.config.image_size)
        self.mean, self.std = processor_normalization(self.model_name, self.image_size, self.device,
                                                      self.config.local_files_only, *self.default_normalization)
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

    @staticmethod
    def _resolve_model(name: str) -> str:
        return resolve_model(name)

    def _load_model(self):
        return load_model(self.model_name, self.dtype, self.device, self.config.local_files_only)

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

    # ---- one object, one frame -------------------------------------------------------------------
    def _record_decoder(self, module, args, output) -> None:
        self._tls.decoder = output

    def _new_session(self, frame: Frame) -> Sam2VideoInferenceSession:
        return self.session_class(
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
        return tracked_result(mask, object_logit, iou)

    def _prune(self, session: Sam2VideoInferenceSession, index: int) -> None:
        prune_session(session, index, self.memory_frames, self.pointer_frames)

    # ---- many objects, one frame (batched) -----------------------------------------------------
    def _run_batch(self, states: list[Sam2ObjectState], built: list[tuple], frame: Frame,
                   inputs: _FrameInput) -> list[ObjectMask]:
        """Step objects with equally long memories (`built` by `memory_inputs`) onto `frame` as one
        batch (their next index each), writing every object's outputs into its own session as the
        per-object call does."""
        batch = len(states)
        indices = [s.index + 1 for s in states]
        low, high, pointer, object_logits, iou, mem_features, mem_pos = step_batch(
            self.model, self._pos, self.image_size, inputs.features.vision["vision_feats"], built)
        for k, (state, index) in enumerate(zip(states, indices)):
            # Copies, so that no object's memory keeps the whole batch's storage alive.
            store_step(state.session, index, inputs.pixel_values, inputs.features.vision, {
                "pred_masks": low[k:k + 1].clone(), "object_pointer": pointer[k:k + 1].clone(),
                "high_res_masks": high[k:k + 1].clone(), "object_score_logits": object_logits[k:k + 1].clone(),
                "maskmem_features": mem_features[:, k:k + 1].clone(), "maskmem_pos_enc": mem_pos[:, k:k + 1].clone(),
            })
        masks = self._to_image(low[:, 0], (frame.height, frame.width))
        # One transfer for all scores, combined as the per-object path does (in double precision).
        logits = object_logits.reshape(-1).float().tolist()
        best_iou = iou.float().amax(dim=-1).clamp(0, 1).tolist()
        results = []
        for k, (state, index) in enumerate(zip(states, indices)):
            if self.config.prune_memory:
                self._prune(state.session, index)
            state.index = index
            state.seq, state.result = frame.seq, tracked_result(masks[k], logits[k], best_iou[k])
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
        built = {obj_id: memory_inputs(self.model, state.session, state.index + 1, self.device, self.dtype)
                 for obj_id, state in states.items()}
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
        return tensor_bytes([session_parts(s) for s in sessions] + [f.vision for f in cached])
