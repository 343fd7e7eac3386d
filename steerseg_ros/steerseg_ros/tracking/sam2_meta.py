"""SAM2 tracking backend on Meta's own code (the PyPI `sam2` package, tracker.backend sam2_meta).

Owns `MetaSam2TrackerConfig`, `MetaSam2Tracker` and `MetaSam2ObjectState`: loading Meta's
checkpoints (`sam2.1_hiera_tiny.pt` ... `large`, or any .pt with its Hydra config) through
`build_sam2`, the per-object memory bank and its pruning, and Meta's compiled mode on CUDA.

How it streams. Meta's `SAM2VideoPredictor` wants the whole video up front (it loads every frame
in `init_state`), so it is not used. The model underneath, `SAM2Base`, exposes the per-frame
step the predictor itself calls: `forward_image` + `_prepare_backbone_features` (the image
encoder), `_track_step` (memory attention and the SAM heads, reading a memory dict
`{"cond_frame_outputs", "non_cond_frame_outputs"}` keyed by frame index) and
`_encode_memory_in_output` / `_encode_new_memory` (the memory encoder). This backend calls those
per frame, per object, and does what the predictor does around them:
- frames are numbered 0, 1, 2, ... per object in the order they are fed (as the transformers
  backend does): the previous frame fed is always the most recent memory, also for keyframes
  and backward tracklets;
- the memory of a prompted (seed) frame is encoded from the binarised mask (the predictor's
  `binarize_mask_from_pts_for_mem_enc`, set on the model here), and every stored memory feature
  is cast to bfloat16, as `_run_single_frame_inference` does;
- the predictor's hole filling (`fill_hole_area`) is not done: it changes only the displayed
  mask, and needs Meta's CUDA extension (not built here: SAM2_BUILD_CUDA=0).
- `num_frames` (the video length, unknown when streaming) is given as large enough never to cut
  the object-pointer window, which is what transformers' streaming mode does too.

The frame checks, pre-processing (resize and normalise), prompt scaling, mask-seed resizing and
the per-frame feature cache are the transformers backend's own (`Sam2FrameInputs`, in
tracking/sam2_inputs.py): both backends then feed the very same pixels and prompts to their models, which is what
the parity test compares. Meta's `load_video_frames` resizes with PIL's bicubic filter instead;
the SAM2 paper leaves the resize open. `sam2.utils.transforms` and `SAM2ImagePredictor` are not
used: they import torchvision, which does not import with the CPU torch build this project pins.

Bounded memory: after each step an object keeps only what `_prepare_memory_conditioned_features`
reads again (its conditioning frame, the memory features of the last num_maskmem - 1 frames and
the object pointers of the last max_obj_ptrs_in_encoder - 1 frames).

Compiled mode (`compile: true`, CUDA only): the model is built as Meta's
`SAM2VideoPredictorVOS` (its `vos_optimized` mode: the image encoder, memory attention, memory
encoder, prompt encoder and mask decoder through `torch.compile(mode="max-autotune")`, with the
clones that make them compilable); this backend still calls only the per-frame methods.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from steerseg_ros.frame import Frame
from steerseg_ros.grounding.base import ModelUnavailableError
from steerseg_ros.tracking.base import MaskCandidate, ObjectMask, ObjectState, Tracker, TrackerError
from steerseg_ros.tracking.sam2_inputs import IMAGENET_MEAN, IMAGENET_STD, Sam2FrameInputs, tracked_result
from steerseg_ros.tracking.sam2_memory import tensor_bytes
from steerseg_ros.tracking.sam2_checkpoints import META_CHECKPOINTS

log = logging.getLogger("steerseg_ros.tracking.sam2_meta")

# Short names for Meta's packaged configs (the checkpoint's file name picks one by default).
CONFIG_ALIASES = {
    "tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "base-plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "large": "configs/sam2.1/sam2.1_hiera_l.yaml",
    "sam2-tiny": "configs/sam2/sam2_hiera_t.yaml",
    "sam2-small": "configs/sam2/sam2_hiera_s.yaml",
    "sam2-base-plus": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2-large": "configs/sam2/sam2_hiera_l.yaml",
}
AUTOCAST = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Hydra's configuration search path is process-global.
_HYDRA_LOCK = threading.Lock()
DOWNLOAD = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
SAM2_MISSING = (
    "Meta's `sam2` package is not installed (tracker.backend sam2_meta needs it). Install it without "
    "its CUDA extension and without pulling another torch: `SAM2_BUILD_CUDA=0 pip install --no-deps "
    "--no-build-isolation -r requirements/sam2_meta.txt` after `pip install hydra-core iopath` "
    "(scripts/setup_env.sh does both), or use tracker.backend sam2 (transformers).")


@dataclass
class MetaSam2TrackerConfig:
    checkpoint: str = field(default="sam2.1_hiera_tiny.pt", metadata={
        "help": "Meta's SAM2 checkpoint (.pt): sam2.1_hiera_tiny.pt, _small, _base_plus, _large (from "
                "https://dl.fbaipublicfiles.com/segment_anything_2/092824/) or any .pt holding {'model': state_dict}"})
    model_config: str = field(default="", metadata={
        "help": "its Hydra config: empty (from the checkpoint's file name, else the .yaml beside it), a short "
                "name tiny, small, base-plus, large (SAM2.1) or sam2-tiny... (SAM2), a packaged config "
                "(configs/sam2.1/sam2.1_hiera_t.yaml) or a .yaml file"})
    device: str = field(default="auto", metadata={"help": "torch device: auto (cuda when available), cpu, cuda, cuda:N"})
    dtype: str = field(default="float32", metadata={
        "help": "compute dtype: float32, or bfloat16 / float16 through torch.autocast (GPU; Meta's own setting)"})
    compile: bool = field(default=False, metadata={
        "help": "Meta's compiled mode (vos_optimized: torch.compile max-autotune of every part; CUDA only; the "
                "first frames compile for minutes)"})
    prune_memory: bool = field(default=True, metadata={
        "help": "drop memory SAM2 no longer reads (bounded memory); false keeps everything, as upstream does"})
    max_objects: int = field(default=16, metadata={"help": "most live objects at once (attach beyond it fails)"})
    feature_cache_frames: int = field(default=8, metadata={
        "help": "image features kept for reuse, by frame (keyframes prompted several times, catch-up "
                "reaching the live frame)"})
    mask_threshold: float = field(default=0.0, metadata={"help": "mask logit threshold"})

    def validate(self) -> None:
        if not self.checkpoint.strip():
            raise ValueError("checkpoint must name Meta's SAM2 .pt file")
        if self.dtype not in AUTOCAST:
            raise ValueError(f"dtype must be one of {sorted(AUTOCAST)}, got {self.dtype!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as e:
                raise ValueError(f"device {self.device!r} is not a torch device: {e}") from e
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")
        if self.feature_cache_frames < 1:
            raise ValueError(f"feature_cache_frames must be >= 1, got {self.feature_cache_frames}")


def import_sam2():
    """Meta's sam2 modules this backend uses; ModelUnavailableError saying how to install when
    the package is missing."""
    try:
        import sam2  # noqa: F401  (initialises Hydra with sam2's packaged configs)
        from sam2 import build_sam
        from sam2.modeling import sam2_base
    except ImportError as e:
        raise ModelUnavailableError(f"{SAM2_MISSING} ({e})") from e
    return build_sam, sam2_base


def resolve_config(checkpoint: str, model_config: str) -> str:
    """The Hydra config for a checkpoint: a packaged config name or a .yaml path."""
    name = model_config.strip()
    if name:
        return CONFIG_ALIASES.get(name, name)
    packaged = META_CHECKPOINTS.get(Path(checkpoint).name)
    if packaged:
        return packaged
    beside = Path(checkpoint).with_suffix(".yaml")
    if beside.is_file():
        return str(beside)
    raise ModelUnavailableError(
        f"no Hydra config for SAM2 checkpoint {checkpoint!r}: its name is none of Meta's ({', '.join(META_CHECKPOINTS)}) "
        f"and there is no {beside.name} beside it; set tracker.model_config")


def missing_checkpoint_message(checkpoint: str) -> str:
    name = Path(checkpoint).name
    url = DOWNLOAD + name if name in META_CHECKPOINTS and name.startswith("sam2.1") else \
        DOWNLOAD + "sam2.1_hiera_tiny.pt"
    return (f"SAM2 checkpoint {checkpoint!r} not found. Download Meta's checkpoint where the internet is "
            f"reachable (e.g. `curl -LO {url}`; also sam2.1_hiera_small.pt, _base_plus.pt, _large.pt) and set "
            f"tracker.checkpoint to its path, or convert a transformers model folder with "
            f"`steerseg-sam2-convert hf-to-meta FOLDER OUT.pt`.")


def load_meta_model(checkpoint: str, model_config: str = "", device: torch.device | str = "cpu",
                    compile: bool = False):
    """Meta's SAM2Base (SAM2VideoPredictorVOS when compiled) from a checkpoint, through
    build_sam2 and its Hydra configs, in eval mode on `device`."""
    build_sam, _ = import_sam2()
    checkpoint = os.path.expanduser(checkpoint)
    if not os.path.isfile(checkpoint):
        raise ModelUnavailableError(missing_checkpoint_message(checkpoint))
    config = resolve_config(checkpoint, model_config)
    overrides = ["++model.binarize_mask_from_pts_for_mem_enc=true"]  # as build_sam2_video_predictor sets
    if compile:
        overrides += ["++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictorVOS",
                      "++model.compile_image_encoder=True"]
    try:
        if config.endswith((".yaml", ".yml")) and os.path.isfile(config):
            # A config file outside the package: Hydra composes from a search path, so point a
            # temporary one at its folder (the context restores sam2's own afterwards).
            from hydra import initialize_config_dir
            from hydra.core.global_hydra import GlobalHydra
            from hydra.initialize import get_gh_backup, restore_gh_from_backup

            path = Path(config).resolve()
            with _HYDRA_LOCK:
                saved = get_gh_backup()
                GlobalHydra.instance().clear()
                try:
                    with initialize_config_dir(config_dir=str(path.parent), version_base="1.2"):
                        model = build_sam.build_sam2(path.name, checkpoint, device=str(device),
                                                     hydra_overrides_extra=overrides)
                finally:
                    restore_gh_from_backup(saved)
        else:
            with _HYDRA_LOCK:
                model = build_sam.build_sam2(config, checkpoint, device=str(device), hydra_overrides_extra=overrides)
    except RuntimeError as e:
        # build_sam's loader logs the missing/unexpected keys and raises a bare RuntimeError.
        raise ModelUnavailableError(f"SAM2 checkpoint {checkpoint!r} does not fit config {config!r} "
                                    f"(missing or unexpected weights: see the log above) {e}") from e
    except Exception as e:  # Hydra's MissingConfigException and friends
        if type(e).__name__ in ("MissingConfigException", "ConfigCompositionException"):
            raise ModelUnavailableError(f"SAM2 config {config!r} not found: {e}") from e
        raise
    return model.eval()


class MetaSam2ObjectState(ObjectState):
    """One object: Meta's memory dict for it, the index of the last frame fed to it, and the frame
    size it was seeded on."""

    def __init__(self, seq: int, result: ObjectMask, memory: dict, owner: "MetaSam2Tracker", size: tuple[int, int]):
        super().__init__(seq, result)
        self.memory = memory
        self.owner = owner
        self.size = size
        self.index = 0


class MetaSam2Tracker(Sam2FrameInputs, Tracker):
    """Streaming SAM2 on Meta's model code (see the module docstring). Thread-safe as the Tracker
    contract requires: objects share only the weights (read-only) and the locked feature cache.
    Frames, prompts, masks and the feature cache are the transformers backend's (Sam2FrameInputs)."""

    name = "sam2_meta"

    def __init__(self, config: Optional[MetaSam2TrackerConfig] = None):
        self.config = config or MetaSam2TrackerConfig()
        self.config.validate()
        self.device = self._resolve_device(self.config.device)
        if self.config.compile and self.device.type != "cuda":
            raise TrackerError("tracker.compile (Meta's vos_optimized mode) needs a CUDA device; "
                               f"this tracker runs on {self.device}")
        self.dtype = torch.float32  # pixel values and stored outputs; autocast handles the rest
        self.autocast = AUTOCAST[self.config.dtype]
        self.model = load_meta_model(self.config.checkpoint, self.config.model_config, self.device, self.config.compile)
        self.image_size = int(self.model.image_size)
        # ImageNet's mean and std, as Meta's load_video_frames normalises; in the fused form the
        # shared Sam2FrameInputs._preprocess takes (pixels in 0..255: each constant times 255, as
        # transformers' processor folds its rescale factor in), so that both backends see the same
        # pixel values bit for bit. Meta's own (x/255 - mean)/std differs by one float rounding.
        as_tensor = lambda v: (torch.tensor(v, dtype=torch.float32, device=self.device)  # noqa: E731
                               * 255.0).view(1, 3, 1, 1)
        self.mean, self.std = as_tensor(IMAGENET_MEAN), as_tensor(IMAGENET_STD)
        self.memory_frames = max(self.model.num_maskmem - 1, 0)
        self.pointer_frames = max(self.model.max_obj_ptrs_in_encoder - 1, 0)
        self._feat_sizes: list[tuple[int, int]] = []
        self._pos: list[torch.Tensor] = []
        self._maskmem_pos: Optional[list[torch.Tensor]] = None
        # The mask decoder's raw outputs (all candidate masks, before the object-presence gate),
        # recorded per thread, for `segment`.
        self._tls = threading.local()
        self._hook = self.model.sam_mask_decoder.register_forward_hook(self._record_decoder)
        self._cache: OrderedDict = OrderedDict()
        self._cache_lock = threading.Lock()
        self._live: dict[int, MetaSam2ObjectState] = {}
        self._live_lock = threading.RLock()
        self.stats: Counter = Counter()

    # ---- features ----------------------------------------------------------------------------
    def _autocast(self):
        if self.autocast is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast)

    _precision = _autocast  # the name Sam2FrameInputs._input calls

    def encoder(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Pixel values -> the (H*W, 1, C) feature maps the tracking step reads, finest first
        (Meta's forward_image, which also applies the mask decoder's two high-resolution
        projections, then _prepare_backbone_features). The position encodings depend only on the
        shapes: kept from the first frame."""
        with torch.inference_mode(), self._autocast():
            backbone = self.model.forward_image(pixel_values.float())
            _, feats, pos, sizes = self.model._prepare_backbone_features(backbone)
        if not self._pos:
            self._pos, self._feat_sizes = [p.clone() for p in pos], [tuple(s) for s in sizes]
        return list(feats)

    def _record_decoder(self, module, args, output) -> None:
        self._tls.decoder = output

    # ---- one object, one frame ------------------------------------------------------------------
    @staticmethod
    def _new_memory() -> dict:
        return {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}

    def _step(self, memory: dict, index: int, features, point_inputs=None, mask_inputs=None,
              run_mem_encoder: bool = True):
        """Meta's per-frame tracking step for one object on its frame `index`; stores the compact
        output in `memory` (unless run_mem_encoder is False) and returns (sam outputs, raw decoder
        outputs). What SAM2VideoPredictor._run_single_frame_inference and _run_memory_encoder do."""
        feats, pos, sizes = features.vision["vision_feats"], self._pos, self._feat_sizes
        is_cond = point_inputs is not None or mask_inputs is not None
        self._tls.decoder = None
        with torch.inference_mode(), self._autocast():
            current, sam_outputs, _, _ = self.model._track_step(
                index, is_cond, feats, pos, sizes, point_inputs, mask_inputs, memory,
                # The stream has no known length; a bound past every stored frame leaves the
                # object-pointer window at max_obj_ptrs_in_encoder, as for a long video.
                index + self.model.max_obj_ptrs_in_encoder + 1, False, None)
            _, _, _, low_res, high_res, obj_ptr, object_logits = sam_outputs
            if run_mem_encoder:
                # Prompted frames are encoded from the binarised mask, as the predictor does for
                # every frame the user interacted with (points or mask).
                self.model._encode_memory_in_output(feats, sizes, True if is_cond else None, True, high_res,
                                                    object_logits, current)
                maskmem = current["maskmem_features"].to(torch.bfloat16)
                if self._maskmem_pos is None:  # the same for every frame and object: keep one
                    self._maskmem_pos = [x[0:1].clone() for x in current["maskmem_pos_enc"]]
                compact = {"maskmem_features": maskmem, "maskmem_pos_enc": self._maskmem_pos,
                           "obj_ptr": obj_ptr, "object_score_logits": object_logits}
                memory["cond_frame_outputs" if is_cond else "non_cond_frame_outputs"][index] = compact
        return sam_outputs, self._tls.decoder

    def _run(self, memory: dict, index: int, frame: Frame, inputs=None, point_inputs=None,
             mask_inputs=None) -> ObjectMask:
        features = (inputs or self._input(frame)).features
        sam_outputs, decoder = self._step(memory, index, features, point_inputs, mask_inputs)
        _, _, ious, low_res, _, _, object_logits = sam_outputs
        object_logit = float(object_logits.reshape(-1)[0])
        if mask_inputs is not None or decoder is None:
            iou = 1.0  # the model takes a mask prompt as the output itself
        else:
            iou = float(decoder[1].reshape(-1).float().max().clamp(0, 1))
        mask = self._to_image(low_res[:, 0], (frame.height, frame.width))[0]
        if self.config.prune_memory:
            self._prune(memory, index)
        with self._cache_lock:
            self.stats["object_steps"] += 1
        # SAM2's occlusion head decides: "not visible" gives an empty mask scored 0.
        return tracked_result(mask, object_logit, iou)

    def _prune(self, memory: dict, index: int) -> None:
        """Drop what no later step reads: the next step, at index + 1, reads memory features at
        ages 0 .. memory_frames - 1 and object pointers at ages 0 .. pointer_frames - 1
        (age = index - frame index), plus the conditioning frames."""
        horizon = max(self.memory_frames, self.pointer_frames)
        tracked = memory["non_cond_frame_outputs"]
        for f in list(tracked):
            age = index - f
            if age >= horizon:
                del tracked[f]
            elif age >= self.memory_frames:
                tracked[f].pop("maskmem_features", None)
                tracked[f].pop("maskmem_pos_enc", None)

    def _prompt(self, frame: Frame, points, labels, mask):
        size = (frame.height, frame.width)
        if mask is not None:
            return None, self._mask_input(mask, size)
        if labels is None:
            raise TrackerError("points need labels (1 positive, 0 negative)")
        prompt = self._points(points, labels, size)
        # Meta's layout: coords (B, P, 2) in model-input pixels, labels (B, P) int32.
        return {"point_coords": prompt["point_coords"][0], "point_labels": prompt["point_labels"][0]}, None

    # ---- Tracker interface -----------------------------------------------------------------------
    def segment(self, frame: Frame, points: np.ndarray, labels: np.ndarray) -> list[MaskCandidate]:
        """SAM2's masks for one point prompt on one frame, best predicted IoU first (three for a
        single point, one for several), before the object-presence gate, as the transformers
        backend returns them."""
        self._check_frame(frame)
        point_inputs, _ = self._prompt(frame, points, labels, None)
        _, decoder = self._step(self._new_memory(), 0, self._input(frame).features, point_inputs,
                                run_mem_encoder=False)
        logits, iou = decoder[0][0].float(), decoder[1][0].float().clamp(0, 1)
        masks = self._to_image(logits, (frame.height, frame.width))
        order = torch.argsort(iou, descending=True).tolist()
        return [MaskCandidate(masks[i], float(iou[i])) for i in order]

    def start(self, frame: Frame, *, points: Optional[np.ndarray] = None, labels: Optional[np.ndarray] = None,
              mask: Optional[np.ndarray] = None) -> MetaSam2ObjectState:
        self._check_frame(frame)
        if (mask is None) == (points is None):
            raise TrackerError("seed an object with either points (and labels) or a mask")
        point_inputs, mask_inputs = self._prompt(frame, points, labels, mask)
        memory = self._new_memory()
        result = self._run(memory, 0, frame, point_inputs=point_inputs, mask_inputs=mask_inputs)
        return MetaSam2ObjectState(frame.seq, result, memory, self, (frame.height, frame.width))

    def _check_state(self, state: ObjectState) -> MetaSam2ObjectState:
        if not isinstance(state, MetaSam2ObjectState) or state.owner is not self:
            raise TrackerError("this object state was not made by this tracker's start()")
        return state

    def _advance(self, state: MetaSam2ObjectState, frame: Frame, inputs=None) -> ObjectMask:
        if (frame.height, frame.width) != state.size:
            raise TrackerError(f"frame {frame.seq} is {frame.width}x{frame.height}; the object was seeded "
                               f"on {state.size[1]}x{state.size[0]} frames")
        result = self._run(state.memory, state.index + 1, frame, inputs)
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
            memories = [s.memory for s in self._live.values()]
        with self._cache_lock:
            cached = list(self._cache.values())
        return tensor_bytes(memories + [f.vision for f in cached])
