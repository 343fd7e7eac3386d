"""The two grounding methods of the vision-language grounder (grounding/vlm.py), as sequences of
its prompts: DecAF (object, category and background prompts, training-free) and SteerSeg
(chain-of-thought attributes, then one grounding prompt steered by the soft prompts).

Owns the order of the prompts, what each decodes and how their rollout maps are fused; the
prompts themselves run through the grounder's `ask`, `content` and `volumes`, the texts come from
`questions`, the fusion from `fusion`. `stage(name)` times each part (the grounder's timings).
"""
from __future__ import annotations

import numpy as np

from steerseg_ros.grounding import fusion, questions
from steerseg_ros.grounding.vlm_inputs import VisualInput


def decaf(grounder, expression: str, video: VisualInput, frame_batches: list[VisualInput], k: int, stage):
    """DecAF: the object prompt over the video and the frames (answers decoded), the category
    chosen from those answers, the background prompt for that category, and the fused
    object-minus-background maps (with `object_mass`, the object-against-background attention
share, when the grounder's in_view_check is "attention"). Returns (maps, class word,
attributes, generated text)."""
    cfg = grounder.config
    with stage("object_prompt"):
        head = questions.object_text(expression)
        video_obj = grounder.ask(video, grounder.content(video, head), capture=True,
                                 decode_tokens=cfg.answer_tokens)
        frame_obj = [grounder.ask(fb, grounder.content(fb, head), capture=True, decode_tokens=cfg.answer_tokens)
                     for fb in frame_batches]
    object_answers = video_obj.texts + [t for a in frame_obj for t in a.texts]
    with stage("category"):
        choice = grounder.ask(None, grounder.content(None, questions.category_text(expression, object_answers)),
                              decode_tokens=cfg.answer_tokens)
        class_word = questions.class_name(choice.texts[0])
    with stage("background_prompt"):
        background = questions.background_text(class_word)
        video_bg = grounder.ask(video, grounder.content(video, background), capture=True)
        frame_bg = [grounder.ask(fb, grounder.content(fb, background), capture=True) for fb in frame_batches]
    with stage("fusion"):
        volumes = (grounder.volumes(video_obj)[0], grounder.volumes(video_bg)[0],
                   np.concatenate([v for a in frame_obj for v in grounder.volumes(a)]),
                   np.concatenate([v for a in frame_bg for v in grounder.volumes(a)]))
        maps = fusion.decaf_maps(*volumes, k, grounder.frames_per_step, cfg.video_kernel, cfg.frame_kernel,
                                 cfg.gaussian_sigma)
        if cfg.in_view_check == "attention":
            # The raw rollouts, smoothed as the fusion smooths them: the min-max normalisation
            # after the contrast would make every map peak, present object or not.
            video_obj_map, video_bg_map, frame_obj_map, frame_bg_map = volumes
            maps.object_mass = 0.5 * (
                fusion.contrast_mass(video_obj_map, video_bg_map, cfg.video_kernel, cfg.gaussian_sigma)
                + fusion.contrast_mass(frame_obj_map, frame_bg_map, cfg.frame_kernel, cfg.gaussian_sigma))
    text = (f"object (video): {video_obj.texts[0]}\n"
            f"object (frames): {' | '.join(t for a in frame_obj for t in a.texts)}\n"
            f"category: {choice.texts[0]}")
    return maps, class_word, [], text


def steerseg(grounder, expression: str, video: VisualInput, frame_batches: list[VisualInput], k: int, stage):
    """SteerSeg: the chain-of-thought attributes (when configured), then the grounding prompt
    with the soft prompts over the video (its one-word answer is the class word) and the frames,
    and the fused steered maps. Returns (maps, class word, attributes, generated text)."""
    cfg = grounder.config
    attributes_text, attributes, cot_text = "", [], ""
    if cfg.cot:
        with stage("attributes"):
            cot = grounder.ask(video, grounder.content(video, questions.attribute_text(expression)),
                               decode_tokens=cfg.cot_tokens)
            cot_text = cot.texts[0]
            attributes = questions.parse_attributes(cot_text)
            attributes_text = "; ".join(attributes)
    head, question = questions.steered_text_parts(expression, attributes_text)
    soft_video = grounder.soft_prompts.video if grounder.soft_prompts is not None else None
    soft_frame = grounder.soft_prompts.frame if grounder.soft_prompts is not None else None
    with stage("grounding_prompt"):
        video_ans = grounder.ask(video, grounder.content(video, head, question, soft_video is not None), soft_video,
                                 capture=True, decode_tokens=cfg.answer_tokens, one_word=True)
        frame_ans = [grounder.ask(fb, grounder.content(fb, head, question, soft_frame is not None), soft_frame,
                                  capture=True) for fb in frame_batches]
    with stage("fusion"):
        maps = fusion.steered_maps(grounder.volumes(video_ans)[0],
                                   np.concatenate([v for a in frame_ans for v in grounder.volumes(a)]),
                                   k, grounder.frames_per_step, cfg.video_kernel, cfg.frame_kernel,
                                   cfg.gaussian_sigma)
    class_word = questions.first_word(video_ans.texts[0])
    text = f"attributes: {cot_text}\nanswer (video): {video_ans.texts[0]}"
    return maps, class_word, attributes, text
