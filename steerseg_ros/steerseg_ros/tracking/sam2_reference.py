"""Where transformers' SAM2 departs from Meta's reference code, and the correction applied to
every Sam2VideoModel the transformers backend loads.

Owns `match_reference(model)`. Found by the cross-implementation parity test
(test/test_sam2_meta_parity.py: the same weights in both codebases, the same frames and prompts):
with points the two give bit-identical masks over 30 DAVIS frames; seeded with a mask they did not.

The departure (transformers 5.23.0, Sam2VideoModel._use_mask_as_output): on a frame prompted with
a mask, SAM2 outputs the mask itself and runs the mask decoder only for the object pointer.
Meta's SAM2Base._use_mask_as_output asks the decoder for a single mask (`multimask_output`
left False), so the pointer comes from the single-mask output token; transformers calls its
`_single_frame_forward` without the argument, whose default is True, and takes the pointer of the
best of three candidate masks. The SAM 2 paper predicts several masks only for ambiguous prompts
(a single click); a mask is not one, and the authors' code decides such details: Meta's is the
reference. The pointer feeds every later frame's memory attention, so masks can drift apart:
per-frame IoU down to 0.970 over 30 DAVIS frames against 1.000 with the correction
(`python -m steerseg_bench.sam2_parity --size 64 --half 0 --memory-scale 30 --attention-scale 30
--uncorrected`; on other random models and clips the effect is smaller or none). The correction
passes multimask_output=False to that one decoder call; the seed pointers then agree to float
rounding (9e-8, values up to 0.4; uncorrected 0.077).
"""
from __future__ import annotations

import logging
import threading

log = logging.getLogger("steerseg_ros.tracking.sam2_reference")


def match_reference(model):
    """Make `model` (a transformers Sam2VideoModel) take a mask prompt's object pointer from a
    single-mask decoder output, as Meta's reference does (see the module docstring). Patches the
    instance only, thread-safely (a flag per thread marks the mask-prompt call). Returns it."""
    use_mask, forward = getattr(model, "_use_mask_as_output", None), getattr(model, "_single_frame_forward", None)
    if use_mask is None or forward is None:
        log.warning("transformers' Sam2VideoModel has no _use_mask_as_output/_single_frame_forward: mask "
                    "prompts keep transformers' own object pointer (may differ from Meta's sam2)")
        return model
    inside = threading.local()

    def use_mask_as_output(*args, **kwargs):
        inside.active = True
        try:
            return use_mask(*args, **kwargs)
        finally:
            inside.active = False

    def single_frame_forward(*args, **kwargs):
        if getattr(inside, "active", False):
            kwargs["multimask_output"] = False
        return forward(*args, **kwargs)

    model._use_mask_as_output = use_mask_as_output
    model._single_frame_forward = single_frame_forward
    return model
