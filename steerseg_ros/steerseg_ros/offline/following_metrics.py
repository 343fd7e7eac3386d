"""The following benchmark's figures: how well what the node published followed the object
through a scene, from the published masks and track ids and the scene's ground truth.

Owns `FrameRecord` (what was published on one frame: `PipelineOutput.visible_tracks()`, the
tracks the node draws), `FollowingScore`, `score_following` (one scene) and `total` (several).
The figures:
- first_mask_s: camera time from the command to the first published mask; first_good_mask_s to
  the first with IoU >= 0.5 (NaN: never).
- J, F, J&F on the frames where the object is visible (the DAVIS definitions, offline/metrics.py).
- J&F_answered: the same from the first frame on which an answer to the command can have landed
  (the grounding latency L after the command) to the end. At L > 0 the frames before it can
  hold no mask whatever the pipeline does (2 s of a 12 s scene at L = 2), so this is the figure
  that shows what a late answer costs the tracking itself.
- false_following: frames with a published mask while the object is hidden, as a count and as a
  share of the hidden frames. A robot would follow whatever that mask is on.
- reacquisition_s, per hidden episode: from the first frame after it on which the object is
  fully back (its visible area equals its whole area: nothing in front, all of it in view) to
  the first frame from there with IoU >= 0.5; NaN when that never comes before the scene ends or
  the object is hidden again.
- id_switches: published frames whose set of track ids differs from that of the previous
  published frame (frames with nothing published in between are skipped: a track that comes
  back under its own id is no switch, one under a new id is).
- wrong_object: frames with a published mask of IoU < 0.1 against a non-empty ground truth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np

from steerseg_ros.offline import metrics
from steerseg_ros.offline.following_scenes import runs

GOOD_IOU = 0.5
WRONG_IOU = 0.1
# Re-acquisition within this long counts as "followed again" in the totals (issue 20's goal).
QUICK_REACQUISITION_S = 1.5


@dataclass
class FrameRecord:
    """What the node published on one frame: the union of the confident tracks' masks and
    their ids."""

    mask: np.ndarray
    track_ids: tuple[int, ...] = ()

    @classmethod
    def from_output(cls, output) -> "FrameRecord":
        """From a PipelineOutput: its visible tracks (what the label image and overlay show)."""
        tracks = output.visible_tracks()
        mask = np.zeros((output.frame.height, output.frame.width), bool)
        for t in tracks:
            mask |= t.mask
        return cls(mask, tuple(sorted(t.id for t in tracks)))

    @property
    def published(self) -> bool:
        return bool(self.mask.any())


@dataclass
class FollowingScore:
    """One scene's figures (see the module docstring)."""

    scene: str
    frames: int
    fps: float
    first_mask_s: float
    first_good_mask_s: float
    j: float
    f: float
    visible_frames: int
    hidden_frames: int
    false_following: int
    reacquisition_s: list[float] = field(default_factory=list)
    id_switches: int = 0
    wrong_object: int = 0
    iou: list[float] = field(default_factory=list, repr=False)
    latency_s: float = 0.0
    j_answered: float = float("nan")
    f_answered: float = float("nan")

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2

    @property
    def jf_answered(self) -> float:
        return (self.j_answered + self.f_answered) / 2

    @property
    def false_following_share(self) -> float:
        return self.false_following / self.hidden_frames if self.hidden_frames else float("nan")

    @property
    def wrong_object_share(self) -> float:
        return self.wrong_object / self.visible_frames if self.visible_frames else float("nan")

    def row(self) -> dict:
        """The figures as a flat dict (times in s, J and F in [0, 1])."""
        reacq = [x for x in self.reacquisition_s if not math.isnan(x)]
        return {
            "scene": self.scene, "frames": self.frames, "first_mask_s": self.first_mask_s,
            "first_good_mask_s": self.first_good_mask_s, "J": self.j, "F": self.f, "J&F": self.jf,
            "J&F_answered": self.jf_answered,
            "visible_frames": self.visible_frames, "hidden_frames": self.hidden_frames,
            "false_following": self.false_following, "false_following_share": self.false_following_share,
            "episodes": len(self.reacquisition_s), "reacquired": len(reacq),
            "reacquisition_s": ";".join("never" if math.isnan(x) else f"{x:.3f}" for x in self.reacquisition_s),
            "reacquisition_mean_s": float(np.mean(reacq)) if reacq else float("nan"),
            "id_switches": self.id_switches, "wrong_object": self.wrong_object,
            "wrong_object_share": self.wrong_object_share,
        }


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def score_following(scene: str, records: Sequence[FrameRecord], gts: Sequence[np.ndarray],
                    whole_area: Sequence[int], fps: float, command_frame: int = 0,
                    latency_s: float = 0.0) -> FollowingScore:
    """One scene's figures. records[i] is what was published on frame i, gts[i] the object's
    visible ground truth there, whole_area[i] its whole area (fully back: the visible area
    reaches it); frame i is at i / fps seconds and the command was given on `command_frame`;
    an answer lands `latency_s` of camera time after it was asked for."""
    n = len(records)
    if not n == len(gts) == len(whole_area):
        raise ValueError(f"{scene}: {n} records, {len(gts)} ground-truth masks, {len(whole_area)} areas")
    published = np.array([r.published for r in records])
    gt_area = np.array([np.count_nonzero(g) for g in gts])
    hidden = gt_area == 0
    iou = np.array([_iou(r.mask, g) if r.published else 0.0 for r, g in zip(records, gts)])

    def after_command(flags: np.ndarray) -> float:
        hits = np.flatnonzero(flags[command_frame:])
        return hits[0] / fps if hits.size else float("nan")

    def jf(frames: np.ndarray) -> tuple[float, float]:
        if not frames.size:
            return float("nan"), float("nan")
        score = metrics.score_object(scene, 1, [records[i].mask for i in frames], [gts[i] for i in frames])
        return score.j, score.f

    visible = np.flatnonzero(~hidden)
    j, f = jf(visible)
    # The first frame at or after the command's stamp plus the latency (1e-9: 2 s at 15 fps is frame 30).
    answered = command_frame + math.ceil(latency_s * fps - 1e-9)
    j_answered, f_answered = jf(visible[visible >= answered])

    fully_back = gt_area >= np.maximum(np.asarray(whole_area), 1)
    good = iou >= GOOD_IOU
    reacquisition = []
    episodes = runs(hidden)
    for k, (_, end) in enumerate(episodes):
        limit = episodes[k + 1][0] if k + 1 < len(episodes) else n
        back = np.flatnonzero(fully_back[end:limit])
        if not back.size:
            reacquisition.append(float("nan"))
            continue
        start = end + int(back[0])
        hit = np.flatnonzero(good[start:limit])
        reacquisition.append(hit[0] / fps if hit.size else float("nan"))

    switches, last = 0, None
    for r in records:
        if r.published:
            if last is not None and r.track_ids != last:
                switches += 1
            last = r.track_ids
    return FollowingScore(
        scene=scene, frames=n, fps=fps, first_mask_s=after_command(published),
        first_good_mask_s=after_command(good), j=j, f=f, visible_frames=int((~hidden).sum()),
        hidden_frames=int(hidden.sum()), false_following=int((published & hidden).sum()),
        reacquisition_s=reacquisition, id_switches=switches,
        wrong_object=int((published & ~hidden & (iou < WRONG_IOU)).sum()), iou=iou.tolist(),
        latency_s=latency_s, j_answered=j_answered, f_answered=f_answered)


def total(scores: Iterable[FollowingScore], quick_s: float = QUICK_REACQUISITION_S) -> dict:
    """Several scenes' figures together: counts summed, shares over all frames of their kind,
    J and F and the first-mask times averaged over scenes (each scene counts once, as each object
    does in DAVIS), re-acquisition over all hidden episodes (the share within `quick_s` counts
    the episodes never re-acquired as failures). Against the latency L the scenes ran at (one L
    for all, else NaN): `first_mask_in_time_share`, scenes whose first published mask came
    within L + 1 s of the command, and `reacquired_in_time_share`, episodes re-acquired within
    L + `quick_s` (issue 20's goals at L > 0)."""
    scores = list(scores)

    def mean(values) -> float:
        values = [v for v in values if not math.isnan(v)]
        return float(np.mean(values)) if values else float("nan")

    hidden = sum(s.hidden_frames for s in scores)
    visible = sum(s.visible_frames for s in scores)
    episodes = [x for s in scores for x in s.reacquisition_s]
    reacq = [x for x in episodes if not math.isnan(x)]
    j, f = mean([s.j for s in scores]), mean([s.f for s in scores])
    ja, fa = mean([s.j_answered for s in scores]), mean([s.f_answered for s in scores])
    latencies = {s.latency_s for s in scores}
    latency = latencies.pop() if len(latencies) == 1 else float("nan")
    return {
        "scenes": len(scores), "frames": sum(s.frames for s in scores),
        "first_mask_s": mean([s.first_mask_s for s in scores]),
        "first_mask_never": sum(math.isnan(s.first_mask_s) for s in scores),
        "first_good_mask_s": mean([s.first_good_mask_s for s in scores]),
        "first_good_mask_never": sum(math.isnan(s.first_good_mask_s) for s in scores),
        "first_mask_in_time_share": (sum(s.first_mask_s <= latency + 1.0 for s in scores) / len(scores)
                                     if scores else float("nan")),
        "J": j, "F": f, "J&F": (j + f) / 2, "J&F_answered": (ja + fa) / 2,
        "visible_frames": visible, "hidden_frames": hidden,
        "false_following": sum(s.false_following for s in scores),
        "false_following_share": sum(s.false_following for s in scores) / hidden if hidden else float("nan"),
        "episodes": len(episodes), "reacquired": len(reacq),
        "reacquisition_mean_s": mean(reacq),
        "reacquisition_median_s": float(np.median(reacq)) if reacq else float("nan"),
        f"reacquired_within_{quick_s:g}s_share": (sum(x <= quick_s for x in reacq) / len(episodes)
                                                  if episodes else float("nan")),
        "reacquired_in_time_share": (sum(x <= latency + quick_s for x in reacq) / len(episodes)
                                     if episodes else float("nan")),
        "id_switches": sum(s.id_switches for s in scores),
        "wrong_object": sum(s.wrong_object for s in scores),
        "wrong_object_share": sum(s.wrong_object for s in scores) / visible if visible else float("nan"),
    }


def score_scene(scene, records: Sequence[FrameRecord], command_frame: int = 0,
                gts: Optional[Sequence[np.ndarray]] = None, latency_s: float = 0.0) -> FollowingScore:
    """score_following for a FollowingScene (its ground truth rendered unless given)."""
    if gts is None:
        gts = [scene.gt(i) for i in range(len(scene))]
    return score_following(scene.name, records, gts, scene.whole_area, scene.fps, command_frame, latency_s)
