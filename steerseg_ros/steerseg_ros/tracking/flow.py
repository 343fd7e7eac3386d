"""The built-in tracker: a classical, weight-free fallback built on OpenCV.

Owns `FlowTracker` and `FlowTrackerConfig`; the frames prepared once and the flow of each frame
pair computed once are tracking/flow_frames.py's. It is what the node runs when no learned tracker is
available, so that the whole pipeline works on any machine. It is a fallback, not a substitute
for SAM2: it drifts on fast articulated motion, cannot see through occlusions, and never
re-detects an object it has lost; what it does is notice when its mask stops showing its object
(see the confidence below), so that the pipeline stops publishing it and re-grounds.

How an object moves from one frame to the next, at a reduced working resolution and inside a
box around the object. Three pieces of evidence are combined as log-odds (they are treated as
independent, so their log-odds add):
1. Motion. Dense optical flow (OpenCV's DIS), backwards and forwards, computed once per frame
   pair and shared by every object, live or catching up. The previous mask is carried forward
   by the backward flow; a forward-backward check says where the flow can be trusted, and
   untrusted motion counts for less.
2. Colour. Lab histograms of the object and of a ring of background around it. The object's
   model changes slowly (its appearance is stable), the background's quickly (it changes as
   the camera moves); neither learns from pixels it has not seen labelled.
3. Motion layers. An affine motion fitted to the background around the object: pixels that
   move like the background and unlike the object are evidence against the object. The cue is
   one-sided (it only removes), because articulated objects do not move as one affine layer.
The result is thresholded, limited to a band around the carried-forward mask (an object grows
only so much in a frame), and detached blobs are dropped.

The per-frame confidence comes from the tracker's own evidence: the share of the object whose
motion passed the check, how well the mask's colours agree with the object's colour model, and
how abruptly its area changed; the weakest counts, and after a failure the confidence climbs
back only gradually. Occlusion: when something slides over the object, the mask either shrinks
to a sliver or is carried onto the occluder or the background beside it, and its own colour
model, which follows the mask, would learn whatever it now covers. So the object also keeps a
reference, learnt only on confidently tracked frames: its colours (against which the mask's
colours are judged at full histogram resolution) and its size (a mask far smaller than the
object was is a sliver, not the object). Either drops the confidence at once, and it then
climbs back only as the evidence allows. A third cue, that the mask's motion must fit the
object's recent motion (a mask that suddenly takes up an occluder's motion has been carried off
by it), is there but off by default (`motion_change_limit`): the two above already leave no
hidden frame confident on the wall test (test_flow_occlusion.py: 0 of 94 with or without it),
while it doubts every object, small in the image, whose image motion changes at once: the
camera starting, stopping or reversing a turn (the following benchmark's pan scenes), the object
turning back (their clips' ends). Off, J&F on the following scenes' visible frames rose from
0.451/0.453 to 0.453/0.487 (development/held-out, oracle grounder, L = 0), most on the pans.
The price is paid with the built-in grounder, which cannot say the object is not in view, so the
tracker's doubt is all that stops its tracks: its false following there rose from 32.7% to
39.4% of hidden frames (L = 0; 15.1% to 20.1% at L = 2).

Measured on DAVIS 2016 val (10 sequences, seeded with the first ground-truth mask): J&F 61.0
(J 63.4, F 58.6); see steerseg_bench/davis_tracker.py.

`segment` turns point prompts into masks with GrabCut at a few box sizes around the points.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

from steerseg_ros.frame import Frame
from steerseg_ros.tracking.base import MaskCandidate, ObjectMask, ObjectState, Tracker, TrackerError
from steerseg_ros.tracking.flow_frames import DIS_PRESETS, FlowPair, FrameFlows, PreparedFrame, colour_bins

# Every probability is kept within [p, 1 - p] before its log-odds are taken, so that no single
# piece of evidence is ever certain (logit(0.98) is about 3.9).
_P_CLIP = 0.02
_MAX_LOG_ODDS = float(np.log((1 - _P_CLIP) / _P_CLIP))
# The reference size follows confident frames this many times faster than the reference colours:
# an object's size changes with its distance, its colours hardly.
_REFERENCE_AREA_RATE = 2.5
# The motion-fit cue compares steps at most this far apart in camera time: beyond it (keyframe
# jumps, a gap in the stream) a constant-velocity prediction says nothing.
_MOTION_HORIZON_S = 0.25


@dataclass
class FlowTrackerConfig:
    """Settings of the built-in optical-flow tracker (see the module docstring)."""

    work_width: int = field(default=432, metadata={
        "help": "Width in pixels at which flow and masks are computed (frames are shrunk to it, keeping "
                "the aspect ratio; never enlarged). About half of 854, so DAVIS's boundary tolerance "
                "(8 px at 480p) is still 4 working pixels; masks come back at full frame size."})
    flow_preset: str = field(default="medium", metadata={
        "help": "OpenCV DIS optical-flow preset: ultrafast, fast or medium (slowest, most accurate)."})
    consistency_relative: float = field(default=0.01, metadata={
        "help": "Forward-backward flow check (Sundaram et al., ECCV 2010): a pixel's motion is trusted "
                "half as much when |forward + backward|^2 reaches relative * (|forward|^2 + |backward|^2) "
                "+ absolute, so fast motion is allowed a proportionally larger error."})
    consistency_absolute: float = field(default=0.5, metadata={
        "help": "The constant term, in working pixels squared, of the forward-backward check."})
    untrusted_confidence: float = field(default=0.75, metadata={
        "help": "How often a label carried by flow that failed the forward-backward check is still "
                "right: 0.5 makes such motion say nothing, 1 makes it as good as checked flow."})
    edge_sigma_px: float = field(default=1.5, metadata={
        "help": "Blur, in working pixels, of the carried-forward mask's edge before it meets the other "
                "evidence: how far colour and motion layers can move the boundary easily in one frame."})
    band_fraction: float = field(default=0.2, metadata={
        "help": "An object may grow at most this fraction of its size (square root of its area) beyond "
                "the carried-forward mask in one frame; the background colour model comes from a ring "
                "twice as wide."})
    colour_bins: int = field(default=16, metadata={
        "help": "Histogram bins per Lab channel of the object and background colour models (2, 4, 8 or 16)."})
    colour_weight: float = field(default=1.0, metadata={
        "help": "Weight of the colour log-odds against the motion log-odds (1: equal standing)."})
    object_colour_update: float = field(default=0.02, metadata={
        "help": "Share of the object's colour model replaced by the current mask's colours each frame "
                "(0.02: a memory of about 50 frames; an object's appearance changes slowly, and a slow "
                "update keeps background that leaked into the mask from being learnt as object)."})
    background_colour_update: float = field(default=0.3, metadata={
        "help": "Share of the background colour model replaced each frame (0.3: a memory of a few "
                "frames; the surroundings change as the object and camera move)."})
    layer_weight: float = field(default=0.5, metadata={
        "help": "Weight of the motion-layer evidence (pixels moving like the background are not the "
                "object); 0 turns it off. Below 1 because flow errors are correlated between neighbouring "
                "pixels, so the per-pixel Gaussian model overstates the evidence."})
    reference_min_score: float = field(default=0.7, metadata={
        "help": "The object's reference (its colours and size, against which occlusion is judged) learns "
                "only from frames scored at least this: clearly above the pipeline's min_confidence, so "
                "that a mask drifting onto an occluder never teaches the reference the occluder."})
    reference_update: float = field(default=0.02, metadata={
        "help": "Share of the reference colour model replaced on each frame that may update it (0.02: a "
                "memory of about 50 confident frames); the reference size follows 2.5 times as fast."})
    appearance_floor: float = field(default=0.5, metadata={
        "help": "Bhattacharyya coefficient between the mask's colours and the reference's (at colour_bins "
                "per channel) at which appearance evidence reaches 0; it is 1 at a coefficient of 1, "
                "linear between. Natural regions share many colours, so unrelated ones still reach 0.6-0.8 "
                "(a visible object about 0.9 and more; an occluder typically 0.6-0.75)."})
    min_extent: float = field(default=0.2, metadata={
        "help": "A mask smaller than this fraction of the object's reference size loses confidence in "
                "proportion: what is left of an object slid over is a sliver, on the occluder's edge."})
    motion_change_limit: float = field(default=0.0, metadata={
        "help": "How far, in object sizes (square root of its area), the mask's motion in one step may "
                "differ from what the object's previous velocity predicts: no evidence against below a "
                "third of this, full evidence against at it (a mask carried off by an occluder sliding "
                "over the object). Only between frames at most 0.25 s apart. 0 (default) turns the cue "
                "off: it cannot tell a carried-off mask from the camera starting to turn (0.3 was its "
                "setting when on)."})
    confidence_recovery_s: float = field(default=3.0, metadata={
        "help": "After its evidence fails, an object's confidence climbs back by at most 1 per this many "
                "seconds: 3 s keeps a track below 0.5 for 1.5 s after a total failure (a cut, a full "
                "occlusion), past the pipeline's default 1 s lost timeout, while a brief dip recovers."})
    flow_cache_pairs: int = field(default=16, metadata={
        "help": "Frame pairs whose flow is kept, so an object catching up through buffered frames reuses "
                "what the live objects computed (about 0.6 MB per pair at 432x243)."})
    segment_scales: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.35], metadata={
        "help": "segment(): half-sizes of the boxes tried around the point prompts, as fractions of the "
                "image's smaller side; one candidate mask per box."})
    segment_width: int = field(default=320, metadata={
        "help": "segment(): width in pixels at which GrabCut runs."})
    segment_iterations: int = field(default=3, metadata={
        "help": "segment(): GrabCut iterations per candidate."})

    def validate(self) -> None:
        if self.work_width < 32:
            raise ValueError(f"work_width must be >= 32, got {self.work_width}")
        if self.flow_preset not in DIS_PRESETS:
            raise ValueError(f"flow_preset must be one of {sorted(DIS_PRESETS)}, got {self.flow_preset!r}")
        for name in ("consistency_relative", "consistency_absolute", "band_fraction", "confidence_recovery_s",
                     "min_extent"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("edge_sigma_px", "colour_weight", "layer_weight", "motion_change_limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.5 <= self.untrusted_confidence <= 1.0:
            raise ValueError(f"untrusted_confidence must be in [0.5, 1], got {self.untrusted_confidence}")
        if not 0.0 <= self.appearance_floor < 1.0:
            raise ValueError(f"appearance_floor must be in [0, 1), got {self.appearance_floor}")
        if self.colour_bins not in (2, 4, 8, 16):
            raise ValueError(f"colour_bins must be 2, 4, 8 or 16, got {self.colour_bins}")
        for name in ("object_colour_update", "background_colour_update", "reference_update",
                     "reference_min_score"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.flow_cache_pairs < 1:
            raise ValueError(f"flow_cache_pairs must be >= 1, got {self.flow_cache_pairs}")
        if not self.segment_scales or any(not 0 < float(s) <= 1 for s in self.segment_scales):
            raise ValueError(f"segment_scales must be non-empty fractions in (0, 1], got {self.segment_scales}")
        if self.segment_width < 32:
            raise ValueError(f"segment_width must be >= 32, got {self.segment_width}")
        if self.segment_iterations < 1:
            raise ValueError(f"segment_iterations must be >= 1, got {self.segment_iterations}")


class FlowObjectState(ObjectState):
    """What one object needs for its next step, and nothing that grows: its mask on the
    previous frame (working resolution), that frame, its two colour models, its reference
    (colours and size, learnt only from confident frames) and its last velocity."""

    def __init__(self, seq: int, result: ObjectMask, prev: PreparedFrame, mask: np.ndarray,
                 fg_hist: np.ndarray, bg_hist: np.ndarray):
        super().__init__(seq, result)
        self.prev = prev
        self.mask = mask  # uint8 0/1 at working resolution
        self.fg_hist = fg_hist
        self.bg_hist = bg_hist
        self.area = float(np.count_nonzero(mask))
        self.ref_hist = fg_hist.copy()
        self.ref_area = self.area
        self.velocity: Optional[np.ndarray] = None  # working pixels per second, or unknown


class FlowTracker(Tracker):
    """Optical flow + colour + motion-layer tracker: the classical fallback, no learned weights."""

    name = "builtin"

    def __init__(self, config: Optional[FlowTrackerConfig] = None):
        self.config = config or FlowTrackerConfig()
        self.config.validate()
        self._objects: dict[int, FlowObjectState] = {}
        # Every object, live or catching up, draws its frames and flows from here.
        self._shared = FrameFlows(self.config)

    # ---- colour models ---------------------------------------------------------------------
    def _histograms(self, prepared: PreparedFrame, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised colour histograms of the object and of a ring of background around it."""
        n_bins = self.config.colour_bins ** 3
        ring = 2 * _band(self.config, float(np.count_nonzero(mask)))
        x0, y0, x1, y1 = _box(mask, ring, mask.shape)
        inside = mask[y0:y1, x0:x1] > 0
        bins = prepared.bins[y0:y1, x0:x1]
        outside = (~inside).astype(np.uint8)
        around = (outside > 0) & (cv2.distanceTransform(outside, cv2.DIST_L2, 3) <= ring)
        fg = np.bincount(bins[inside], minlength=n_bins).astype(np.float32)
        bg = np.bincount(bins[around], minlength=n_bins).astype(np.float32)
        return fg / max(fg.sum(), 1.0), bg / max(bg.sum(), 1.0)

    def _colour_posterior(self, state: FlowObjectState, bins: np.ndarray) -> np.ndarray:
        """P(object | colour) with equal priors; a colour seen in neither model gives 0.5."""
        floor = 1.0 / self.config.colour_bins ** 3
        fg = state.fg_hist + floor
        return (fg / (fg + state.bg_hist + floor))[bins]

    # ---- the per-object step ---------------------------------------------------------------
    def _propagate(self, state: FlowObjectState, frame: Frame) -> ObjectMask:
        """Move `state` to `frame` (the frame after state.prev) and return the new mask."""
        cfg = self.config
        cur = self._shared.prepare(frame)
        if cur.shape != state.prev.shape or state.area <= 0:
            # Nothing left to carry, or the camera changed resolution: the object is lost.
            return self._set_lost(state, cur)
        flow = self._shared.flow(state.prev, cur)
        h, w = cur.grey.shape
        band = _band(cfg, state.area)
        y0, y1, x0, x1 = self._reach_box(state, flow, band, (h, w))
        roi = np.s_[y0:y1, x0:x1]

        # 1. Motion: the previous mask carried by the backward flow, trusted where the flow
        # passed its check, less elsewhere.
        map_x, map_y = flow.maps(y0, y1, x0, x1)
        warped = cv2.remap(state.mask.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        trust = flow.trust[roi].astype(np.float32)
        core = (warped > 0.5).astype(np.uint8)
        soft = cv2.GaussianBlur(warped, (0, 0), cfg.edge_sigma_px) if cfg.edge_sigma_px > 0 else warped
        reliability = trust + (1 - trust) * (2 * cfg.untrusted_confidence - 1)
        motion = np.clip(0.5 + (soft - 0.5) * reliability, _P_CLIP, 1 - _P_CLIP)

        # 2. Colour, 3. motion layers.
        colour = np.clip(self._colour_posterior(state, cur.bins[roi]), _P_CLIP, 1 - _P_CLIP)
        log_odds = _logit(motion) + cfg.colour_weight * _logit(colour)
        if cfg.layer_weight > 0:
            log_odds += cfg.layer_weight * _background_layer_log_odds(flow, (y0, x0), map_x, map_y, warped, trust)

        # The object grows by at most the band in one frame, and stays in one piece with what
        # the flow carried (blobs that lost contact with it are background that looked alike).
        reach = cv2.distanceTransform(1 - core, cv2.DIST_L2, 3) <= band
        new = _keep_touching(((log_odds > 0) & reach).astype(np.uint8), core)

        mask = np.zeros((h, w), np.uint8)
        mask[roi] = new
        area = float(np.count_nonzero(new))
        full = _full_mask(log_odds, new, (y0, y1, x0, x1), (h, w), cur.shape)
        fg, bg = self._histograms(cur, mask) if area > 0 else (None, None)
        fit = self._motion_fit(state, flow, roi, new, area, frame.stamp_ns)
        score = self._confidence(state, core, trust, area, fg, fit, frame.stamp_ns)
        if area > 0:
            a, b = cfg.object_colour_update, cfg.background_colour_update
            state.fg_hist = (1 - a) * state.fg_hist + a * fg
            state.bg_hist = (1 - b) * state.bg_hist + b * bg
            if score >= cfg.reference_min_score:
                r = cfg.reference_update
                state.ref_hist = (1 - r) * state.ref_hist + r * fg
                state.ref_area += min(1.0, _REFERENCE_AREA_RATE * r) * (area - state.ref_area)
        state.mask = mask
        state.area = area
        state.prev = cur
        state.seq = frame.seq
        state.result = ObjectMask(full, score)
        return state.result

    def _reach_box(self, state: FlowObjectState, flow: FlowPair, band: int,
                   hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """y0, y1, x0, x1 of where the object can be now: its previous box grown by the largest
        motion around it and by the band."""
        h, w = hw
        x0, y0, x1, y1 = _box(state.mask, 0, hw)
        # The backward flow is known per current pixel; the object's displacement is bounded by
        # the largest backward motion in a generous box around where it was.
        pad = band + 8
        around = flow.disp[max(0, y0 - pad):min(h, y1 + pad), max(0, x0 - pad):min(w, x1 + pad)]
        motion = int(np.ceil(float(np.abs(around).max(initial=0)))) if around.size else 0
        grow = motion + band + 2
        return max(0, y0 - grow), min(h, y1 + grow), max(0, x0 - grow), min(w, x1 + grow)

    def _motion_fit(self, state: FlowObjectState, flow: FlowPair, roi, new: np.ndarray, area: float,
                    stamp_ns: int) -> float:
        """How well the mask's motion in this step fits the object's previous velocity, in [0, 1]
        (1 when there is nothing to compare: first step, a gap over _MOTION_HORIZON_S, the cue
        off), and the velocity updated. The error is the distance between where the mask moved
        and where the previous velocity put it, in object sizes."""
        limit = self.config.motion_change_limit
        dt = (stamp_ns - state.prev.stamp_ns) * 1e-9  # negative when propagating backwards in time
        if area <= 0 or dt == 0 or abs(dt) > _MOTION_HORIZON_S:
            state.velocity = None
            return 1.0
        # The backward flow points from each current pixel to where it was: minus the motion.
        moved = -flow.disp[roi][new > 0].astype(np.float32).mean(axis=0)
        previous, state.velocity = state.velocity, moved / dt
        if previous is None or limit <= 0:
            return 1.0
        error = float(np.linalg.norm(moved - previous * dt)) / np.sqrt(area)
        return float(np.clip((limit - error) / (limit * 2 / 3), 0.0, 1.0))

    def _confidence(self, state: FlowObjectState, core: np.ndarray, trust: np.ndarray, area: float,
                    fg: Optional[np.ndarray], fit: float, stamp_ns: int) -> float:
        """Confidence in [0, 1] from the step's own evidence, as low as the weakest of
        motion: the share of the carried-forward object whose flow passed the consistency check
            (near 0 across a cut, low where the object is being occluded);
        appearance: the Bhattacharyya coefficient between the mask's colours and the object's
            colour model (coarsened to at most 8 bins per channel, so sampling noise stays small),
            and against the reference colours, at full resolution, mapped from appearance_floor..1
            to 0..1 (the colour model follows the mask, also onto an occluder; the reference does not);
        area: 1 for a steady area, 1/2 when it halves or doubles in one frame;
        extent: the mask's area against min_extent x the reference size (what an occluder leaves
            of an object is a sliver);
        motion fit: `_motion_fit` (a mask carried off by an occluder changes its motion at once; off
            by default).
        (How distinct the object's colours are from its surroundings is left out: it says how
        hard the object is to segment, not whether it is there.)
        The result may fall at once but rises by at most dt / confidence_recovery_s: after a
        failure the tracker has to earn its confidence back over time."""
        if area <= 0 or not core.any():
            return 0.0
        motion = float(trust[core > 0].mean())
        k = self.config.colour_bins
        coarse = min(k, 8)
        appearance = float(np.sqrt(_coarsen(fg, k, coarse) * _coarsen(state.fg_hist, k, coarse)).sum())
        floor = self.config.appearance_floor
        reference = (float(np.sqrt(fg * state.ref_hist).sum()) - floor) / (1.0 - floor)
        change = abs(np.log(area / max(state.area, 1.0)))
        area_term = float(np.exp2(-(change / np.log(2)) ** 2))
        extent = area / max(self.config.min_extent * state.ref_area, 1.0)
        now = float(np.clip(min(motion, appearance, reference, area_term, extent, fit), 0.0, 1.0))
        dt = abs(stamp_ns - state.prev.stamp_ns) * 1e-9  # propagation may run backwards in time
        return min(now, state.result.score + dt / self.config.confidence_recovery_s)

    def _set_lost(self, state: FlowObjectState, cur: PreparedFrame) -> ObjectMask:
        state.mask = np.zeros(cur.grey.shape, np.uint8)
        state.area = 0.0
        state.velocity = None
        state.prev = cur
        state.seq = cur.seq
        state.result = ObjectMask(np.zeros(cur.shape, bool), 0.0)
        return state.result

    # ---- Tracker interface -----------------------------------------------------------------
    def start(self, frame: Frame, *, points: Optional[np.ndarray] = None,
              labels: Optional[np.ndarray] = None, mask: Optional[np.ndarray] = None) -> FlowObjectState:
        """A detached object on `frame`, from a mask or from point prompts (then the best
        candidate of `segment`)."""
        if (mask is None) == (points is None):
            raise TrackerError("start needs either a mask or points with labels (exactly one of them)")
        if mask is None:
            candidates = self.segment(frame, points, labels)
            if not candidates:
                raise TrackerError("the point prompts gave no mask to track")
            mask = candidates[0].mask
        mask = np.asarray(mask)
        if mask.shape != frame.image.shape[:2]:
            raise TrackerError(f"seed mask shape {mask.shape} differs from the frame's {frame.image.shape[:2]}")
        mask = mask.astype(bool)
        if not mask.any():
            raise TrackerError("seed mask is empty")
        cur = self._shared.prepare(frame)
        h, w = cur.grey.shape
        small = (cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5).astype(np.uint8)
        if not small.any():
            # A sliver thinner than a working pixel: keep the working pixel at its centre.
            ys, xs = np.nonzero(mask)
            small[min(h - 1, int(ys.mean() * h / mask.shape[0])), min(w - 1, int(xs.mean() * w / mask.shape[1]))] = 1
        fg, bg = self._histograms(cur, small)
        return FlowObjectState(frame.seq, ObjectMask(mask.copy(), 1.0), cur, small, fg, bg)

    def advance(self, state: ObjectState, frame: Frame) -> ObjectMask:
        """Propagate a detached object to `frame`: the next buffered frame when catching up, or
        any other frame, earlier or later (tracklets go from keyframe to keyframe, forward and
        then backward); the flow is simply computed between the two frames."""
        if not isinstance(state, FlowObjectState):
            raise TrackerError(f"state of type {type(state).__name__} does not come from this tracker")
        if frame.seq == state.prev.seq and frame.stamp_ns == state.prev.stamp_ns:
            return state.result
        return self._propagate(state, frame)

    def attach(self, obj_id: int, state: ObjectState) -> None:
        if not isinstance(state, FlowObjectState):
            raise TrackerError(f"state of type {type(state).__name__} does not come from this tracker")
        self._objects[int(obj_id)] = state

    def remove(self, obj_id: int) -> None:
        self._objects.pop(int(obj_id), None)

    def step(self, frame: Frame) -> dict[int, ObjectMask]:
        # Every object steps from its own previous frame; live objects share it, so the flow
        # of the pair is computed by the first and found in the cache by the others. A frame
        # not newer than an object's last one (a repeated step) leaves it where it is.
        return {obj_id: state.result if frame.seq <= state.prev.seq else self._propagate(state, frame)
                for obj_id, state in self._objects.items()}

    @property
    def object_ids(self) -> list[int]:
        return list(self._objects)

    def reset(self) -> None:
        self._objects.clear()
        self._shared.clear()

    def close(self) -> None:
        self.reset()

    # ---- single-frame masks from points ------------------------------------------------------
    def segment(self, frame: Frame, points: np.ndarray, labels: np.ndarray) -> list[MaskCandidate]:
        """GrabCut at a few box sizes around the positive points (their bounding box grown by
        each of `segment_scales`): outside a box is background; inside, probable object; a disk
        around each positive point (a quarter of the box's half-size) is certain object and
        one around each negative point certain background. Best first by `_candidate_quality`;
        near-duplicates (IoU > 0.9) are dropped."""
        cfg = self.config
        points, labels = _check_points(points, labels, frame.image.shape[:2])
        H, W = frame.image.shape[:2]
        scale = min(1.0, cfg.segment_width / W)
        sh, sw = max(8, round(H * scale)), max(8, round(W * scale))
        small = frame.image if scale >= 1 else cv2.resize(frame.image, (sw, sh), interpolation=cv2.INTER_AREA)
        bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
        pts = np.round(points * np.array([sw / W, sh / H], np.float32)).astype(int)
        pts = np.clip(pts, 0, [sw - 1, sh - 1])
        pos, neg = pts[labels == 1], pts[labels == 0]
        side = min(sh, sw)
        point_r = max(1, int(round(0.015 * side)))
        candidates: list[MaskCandidate] = []
        for s in sorted(float(s) for s in cfg.segment_scales):
            half = max(4, int(round(s * side)))
            x0, y0 = max(0, pos[:, 0].min() - half), max(0, pos[:, 1].min() - half)
            x1, y1 = min(sw, pos[:, 0].max() + half + 1), min(sh, pos[:, 1].max() + half + 1)
            # GrabCut only needs the box and a margin of background around it.
            m = max(4, half // 2)
            cx0, cy0, cx1, cy1 = max(0, x0 - m), max(0, y0 - m), min(sw, x1 + m), min(sh, y1 + m)
            gc = np.full((cy1 - cy0, cx1 - cx0), cv2.GC_BGD, np.uint8)
            gc[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0] = cv2.GC_PR_FGD
            seeds = np.zeros(gc.shape, np.uint8)
            for x, y in pos:
                cv2.circle(seeds, (int(x - cx0), int(y - cy0)), max(point_r, half // 4), 1, -1)
            gc[seeds > 0] = cv2.GC_FGD
            for x, y in neg:
                cv2.circle(gc, (int(x - cx0), int(y - cy0)), point_r, cv2.GC_BGD, -1)
            crop = np.ascontiguousarray(bgr[cy0:cy1, cx0:cx1])
            # GrabCut starts its colour models with k-means from OpenCV's random generator (one
            # per thread); a fixed seed makes the same prompt give the same masks every time.
            cv2.setRNGSeed(0)
            try:
                cv2.grabCut(crop, gc, None, np.zeros((1, 65)), np.zeros((1, 65)), cfg.segment_iterations,
                            cv2.GC_INIT_WITH_MASK)
            except cv2.error:
                continue  # degenerate colour statistics (e.g. a flat image): no candidate at this size
            fg = _keep_touching(((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8), seeds)
            quality = _candidate_quality(crop, fg, seeds, (x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0))
            if quality <= 0:
                continue
            small_mask = np.zeros((sh, sw), np.float32)
            small_mask[cy0:cy1, cx0:cx1] = fg
            full = cv2.resize(small_mask, (W, H), interpolation=cv2.INTER_LINEAR) > 0.5
            if full.any() and not any(_iou(full, c.mask) > 0.9 for c in candidates):
                candidates.append(MaskCandidate(full, quality))
        candidates.sort(key=lambda c: -c.score)
        return candidates


# ---- helpers: small numerics that OpenCV and numpy do not provide as such ----------------------
def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1.0 - p))


def _coarsen(hist: np.ndarray, bins: int, coarse: int) -> np.ndarray:
    """A joint histogram with `bins` levels per channel summed down to `coarse` levels."""
    k = bins // coarse
    return hist.reshape(coarse, k, coarse, k, coarse, k).sum(axis=(1, 3, 5)).reshape(-1)


def _band(config: FlowTrackerConfig, area: float) -> int:
    """How far (working pixels) an object of this area may grow in one frame."""
    return max(2, int(round(config.band_fraction * np.sqrt(max(area, 1.0)))))


def _box(mask: np.ndarray, pad: int, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 of the mask's bounding box grown by pad and clipped (the whole image when
    the mask is empty)."""
    h, w = hw
    pts = cv2.findNonZero(mask.astype(np.uint8))
    if pts is None:
        return 0, 0, w, h
    x, y, bw, bh = cv2.boundingRect(pts)
    return max(0, x - pad), max(0, y - pad), min(w, x + bw + pad), min(h, y + bh + pad)


def _keep_touching(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The connected parts of `mask` that overlap `seeds`."""
    if not mask.any():
        return mask
    n, labels = cv2.connectedComponents(mask, connectivity=8)
    keep = np.zeros(n, bool)
    keep[np.unique(labels[(seeds > 0) & (mask > 0)])] = True
    keep[0] = False
    return keep[labels].astype(np.uint8)


def _fit_affine(xs: np.ndarray, ys: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Least-squares affine motion d = [x, y, 1] @ coef (3x2), refitted once without the worst
    fifth of the points (a cheap guard against outliers; OpenCV's estimateAffine2D fits point
    correspondences with RANSAC, which is more than a dense, mostly clean field needs)."""
    a = np.stack([xs, ys, np.ones_like(xs)], axis=1).astype(np.float64)
    d = d.astype(np.float64)

    def solve(rows):
        # The 3x3 normal equations, with a touch of ridge for degenerate (collinear) samples.
        return np.linalg.solve(a[rows].T @ a[rows] + 1e-6 * np.eye(3), a[rows].T @ d[rows])

    coef = solve(slice(None))
    r = ((a @ coef - d) ** 2).sum(1)
    keep = r <= np.quantile(r, 0.8)
    return solve(keep) if np.count_nonzero(keep) >= 6 else coef


def _background_layer_log_odds(flow: FlowPair, origin: tuple[int, int], map_x: np.ndarray, map_y: np.ndarray,
                               warped: np.ndarray, trust: np.ndarray) -> np.ndarray:
    """Motion layers: for each pixel, min(0, log-odds that it moves like the object rather than
    like the background around it), from an affine motion fitted to each among trusted pixels.
    0 where the two motions agree, where the flow is untrusted, or with too few samples."""
    oy, ox = origin
    rh, rw = warped.shape
    ys, xs = np.mgrid[0:rh, 0:rw].astype(np.float32)
    dx = map_x - (xs + ox)
    dy = map_y - (ys + oy)
    good = trust > 0.5
    fg = good & (warped > 0.9)
    bg = good & (warped < 0.1)
    if np.count_nonzero(fg) < 20 or np.count_nonzero(bg) < 20:
        return np.zeros_like(warped)
    # A few thousand samples pin down six parameters; subsampling keeps big objects cheap.
    step = max(1, int(np.sqrt((np.count_nonzero(fg) + np.count_nonzero(bg)) / 4000)))
    sub = np.zeros_like(good)
    sub[::step, ::step] = True
    fs, bs = fg & sub, bg & sub

    def residual2(sel):
        c = _fit_affine(xs[sel], ys[sel], np.stack([dx[sel], dy[sel]], axis=1))
        return (dx - (c[0, 0] * xs + c[1, 0] * ys + c[2, 0])) ** 2 + (dy - (c[0, 1] * xs + c[1, 1] * ys + c[2, 1])) ** 2

    r_f, r_b = residual2(fs), residual2(bs)
    # The layers' own fit errors set the noise scale (for 2-D Gaussian errors the median squared
    # residual is 1.386 sigma^2), so noisy flow makes a weak cue by itself.
    var = max(0.25, 0.5 * (float(np.median(r_f[fs])) + float(np.median(r_b[bs]))) / 1.386)
    return np.clip((r_b - r_f) / (2 * var), -_MAX_LOG_ODDS, 0.0) * trust


def _full_mask(log_odds: np.ndarray, new: np.ndarray, roi: tuple[int, int, int, int],
               work_hw: tuple[int, int], full_hw: tuple[int, int]) -> np.ndarray:
    """The mask at full frame size: the probability, held on the chosen side of 0.5 at every
    working pixel, resampled to the frame's grid with pixel centres aligned and thresholded, so
    the boundary falls between working pixels where the evidence puts it."""
    H, W = full_hw
    h, w = work_hw
    full = np.zeros((H, W), bool)
    if not new.any():
        return full
    y0, y1, x0, x1 = roi
    sy, sx = h / H, w / W
    Y0, Y1 = int(y0 / sy), min(H, int(np.ceil(y1 / sy)))
    X0, X1 = int(x0 / sx), min(W, int(np.ceil(x1 / sx)))
    p = 1.0 / (1.0 + np.exp(-log_odds))
    prob = np.where(new > 0, np.maximum(p, 0.51), np.minimum(p, 0.49)).astype(np.float32)
    # Full pixel X samples working coordinate (X + 0.5) * sx - 0.5.
    to_roi = np.float32([[sx, 0, (X0 + 0.5) * sx - 0.5 - x0], [0, sy, (Y0 + 0.5) * sy - 0.5 - y0]])
    up = cv2.warpAffine(prob, to_roi, (X1 - X0, Y1 - Y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                        borderMode=cv2.BORDER_CONSTANT)
    full[Y0:Y1, X0:X1] = up > 0.5
    return full


def _candidate_quality(bgr: np.ndarray, fg: np.ndarray, seeds: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """A predicted quality in [0, 1] for a GrabCut mask, the product of:
    separation: one minus the overlap of its colour histogram with a ring around it's;
    not cut off: one minus the share of its outline on the box's edge (a box too small);
    fill: the square root of the share of the box it fills (a box too large, or a mere part).
    0 for a mask that is little more than its seed disks (GrabCut found nothing around them)."""
    area = np.count_nonzero(fg)
    if area <= 1.5 * np.count_nonzero(seeds):
        return 0.0
    ring = cv2.dilate(fg, np.ones((9, 9), np.uint8)) & (1 - fg)
    if not ring.any():
        return 0.0
    bins = colour_bins(cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB), 8)
    hf = np.bincount(bins[fg > 0], minlength=512).astype(np.float64)
    hb = np.bincount(bins[ring > 0], minlength=512).astype(np.float64)
    separation = 1.0 - np.minimum(hf / hf.sum(), hb / hb.sum()).sum()
    x0, y0, x1, y1 = box
    outline = fg - cv2.erode(fg, np.ones((3, 3), np.uint8))
    on_edge = np.zeros_like(fg)
    on_edge[y0:y1, x0:x1] = 1
    on_edge[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = 0
    cut_off = np.count_nonzero(outline & on_edge) / max(1, np.count_nonzero(outline))
    fill = area / max(1, (x1 - x0) * (y1 - y0))
    return float(np.clip(separation * (1.0 - cut_off) * np.sqrt(fill), 0.0, 1.0))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def _check_points(points, labels, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Validated (N, 2) float points and (N,) int labels, or TrackerError saying what is wrong."""
    if points is None or labels is None:
        raise TrackerError("point prompts need both points and labels")
    points = np.asarray(points, np.float32)
    labels = np.asarray(labels)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise TrackerError(f"points must be an (N, 2) array of (x, y) pixels with N >= 1, got shape {points.shape}")
    if labels.shape != (len(points),):
        raise TrackerError(f"labels must have shape ({len(points)},), got {labels.shape}")
    if not np.all(np.isfinite(points)):
        raise TrackerError("points must be finite")
    if not np.isin(labels, (0, 1)).all():
        raise TrackerError(f"labels must be 1 (positive) or 0 (negative), got {np.unique(labels).tolist()}")
    h, w = hw
    outside = (points[:, 0] < 0) | (points[:, 0] > w - 1) | (points[:, 1] < 0) | (points[:, 1] > h - 1)
    if outside.any():
        raise TrackerError(f"point(s) {points[outside].tolist()} lie outside the {w}x{h} image")
    if not (labels == 1).any():
        raise TrackerError("point prompts need at least one positive point (label 1)")
    return points, labels.astype(np.int32)
