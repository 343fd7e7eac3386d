"""Randomly initialised Qwen-VL checkpoints built in code, for tests, demos and benchmarks.

Owns `build_tiny_checkpoint` (a few-MB Qwen2-VL, Qwen2.5-VL or Qwen3-VL model with a locally
trained tokenizer, a chat template and the family's image processor, saved to a folder that
`VLMGrounder` loads like a downloaded checkpoint), `build_tokenizer`, and the configs of the real
Qwen2.5-VL-3B and -7B shapes (`qwen2_5_vl_3b_config`, `qwen2_5_vl_7b_config`) for benchmarks.

No weights can be downloaded on the machines this project is tested on, so every model the
tests use comes from here: real transformers classes with random weights, saved with
`save_pretrained` and read back through the same loading code users run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

# The Qwen special tokens the processors and chat template rely on, in the order Qwen's own
# vocabulary has them (after <|endoftext|>).
QWEN_SPECIAL_TOKENS = [
    "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# A chat template in the Qwen-VL layout: a default system turn, vision items as
# <|vision_start|><|image_pad|/|video_pad|><|vision_end|>, then the text, in ChatML.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Text the tokenizer is trained on: the grounder's own prompts plus everyday words for objects,
# colours, places and motion, so commands in tests tokenize into a few tokens per word.
_WORDS = """
the a an of in on at to with and or is are it its this that which what where who main object
mentioned given expression answer single word phrase describe background scene video image frame
excluding any class name best names refers candidate answers using attributes above colour color
position motion size target briefly left right top bottom middle centre center front behind near
far small large big tall short moving still walking running jumping swimming flying riding
standing sitting red green blue yellow black white brown grey gray orange pink purple dark light
person man woman boy girl child people dog cat horse cow cows goat camel swan bird kite surfer
bike bicycle motorcycle car truck bus train boat cup mug bottle chair table bed sofa door window
tree grass water sky road street floor wall bag box ball phone laptop book shoe hat shirt
dancer rider animal vehicle plant lamp picture one two three first second last other
"""


def _training_corpus() -> list[str]:
    from steerseg_ros.grounding import questions

    lines = [line for line in _WORDS.split("\n") if line.strip()]
    lines += questions.template_texts()
    # Repeats give the frequent pairs enough weight for BPE to merge them into whole words.
    return lines * 4


# Answer words a real Qwen vocabulary holds as single tokens and the grounder's visibility
# question reads the logits of (grounding/vlm.py, in_view_check "question"). The corpus is too
# small for BPE to learn them, so `build_tokenizer` appends them (see there).
ANSWER_WORDS = ("yes", "Yes", "no", "No")


def build_tokenizer(vocab_size: int = 512, answer_words: tuple[str, ...] = ANSWER_WORDS):
    """A byte-level BPE tokenizer in Qwen2's format, trained here, with the Qwen special tokens
    and the chat template. Returns a transformers `Qwen2Tokenizer`.

    Each of `answer_words` becomes one token: its merges are appended after the trained ones and
    its ids after the special tokens, so every id the trained vocabulary and the special tokens
    had stays as it was (a model built with the same seed gets the same embedding rows), and
    only text where those letters were still unmerged tokenizes differently."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    # Qwen2Tokenizer() builds Qwen's normaliser, pre-tokenizer and decoder around an empty BPE;
    # training that backend gives a vocabulary that tokenizes exactly the way Qwen's does.
    backend = Qwen2Tokenizer()._tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator(_training_corpus(), trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS})
    tokenizer.chat_template = CHAT_TEMPLATE
    if not answer_words:
        return tokenizer
    # Rebuild with the special tokens at the ids they just got, then the answer words' pieces
    # merged left to right into new ids after them.
    vocab = {**model["vocab"], **{tok: tokenizer.convert_tokens_to_ids(tok) for tok in QWEN_SPECIAL_TOKENS}}
    next_id = len(tokenizer)
    for word in answer_words:
        pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode(word, add_special_tokens=False))
        merged = pieces[0]
        for piece in pieces[1:]:
            merges.append((merged, piece))
            merged += piece
            if merged not in vocab:
                vocab[merged] = next_id
                next_id += 1
    extended = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    extended.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS})
    extended.chat_template = CHAT_TEMPLATE
    return extended


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def tiny_config(family: str, tokenizer, num_layers: int = 4, initializer_range: float = 0.02):
    """The config of a tiny random model of `family` ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
    real patch sizes and merge factors, small widths.

    initializer_range: the std of the random weights (text and vision). At the usual 0.02 the
    queries and keys of normalised hidden states are so small that every attention row is
    nearly uniform, and no input can make it otherwise; training soft prompts on such a model
    shows nothing. A few tenths give attention with structure to steer."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig

    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    text = dict(vocab_size=_round_up(len(tokenizer), 64), hidden_size=64, intermediate_size=128,
                num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=4096, initializer_range=initializer_range,
                bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    if family == "qwen2_vl":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}
        vision = dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                      initializer_range=initializer_range)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **ids, initializer_range=initializer_range)
    if family == "qwen2_5_vl":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}
        # window_size 56 px = 2x2 merged tokens per window, so window attention really reorders.
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                      fullatt_block_indexes=[1], tokens_per_second=2, initializer_range=initializer_range)
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids, initializer_range=initializer_range)
    if family == "qwen3_vl":
        text.update(head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                                   "mrope_section": [4, 2, 2], "mrope_interleaved": True})
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                      num_position_embeddings=64, deepstack_visual_indexes=[0],
                      initializer_range=initializer_range)
        return Qwen3VLConfig(text_config=text, vision_config=vision, **ids, initializer_range=initializer_range)
    raise ValueError(f"unknown family {family!r}; expected one of {TINY_FAMILIES}")


TINY_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def image_processor_for(family: str, **overrides):
    """The family's image processor (the PIL one: torchvision is not usable here) with the
    family's patch size and normalisation."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if family == "qwen3_vl":
        kwargs = dict(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3, size={"shortest_edge": 65536, "longest_edge": 16777216})
    else:
        kwargs = dict(patch_size=14, merge_size=2, temporal_patch_size=2, image_mean=list(OPENAI_CLIP_MEAN),
                      image_std=list(OPENAI_CLIP_STD), size={"shortest_edge": 3136, "longest_edge": 12845056})
    kwargs.update(overrides)
    return Qwen2VLImageProcessorPil(**kwargs)


def save_checkpoint(folder: str | Path, model, tokenizer, image_processor) -> Path:
    """Write model, tokenizer, image processor and chat template the way a hub checkpoint
    lays them out (config.json, model.safetensors, tokenizer files, preprocessor_config.json,
    chat_template.jinja)."""
    from steerseg_ros.grounding.vlm_inputs import processor_class

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor = processor_class(model.config.model_type)(image_processor=image_processor, tokenizer=tokenizer,
                                                         chat_template=tokenizer.chat_template)
    processor.save_pretrained(folder)
    return folder


def build_tiny_checkpoint(folder: str | Path, family: str = "qwen2_5_vl", num_layers: int = 4,
                          seed: int = 0, tokenizer=None, initializer_range: float = 0.02) -> Path:
    """Build a tiny random `family` model and save it with its processor files to `folder`
    (created). Returns the folder, loadable with `VLMGrounderConfig(model=str(folder))`."""
    import torch

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    config = tiny_config(family, tokenizer, num_layers, initializer_range)
    torch.manual_seed(seed)
    from steerseg_ros.grounding.vlm_inputs import model_class_for

    model = model_class_for(family)(config).eval()
    return save_checkpoint(folder, model, tokenizer, image_processor_for(family))


def qwen2_5_vl_3b_config(num_layers: Optional[int] = None, vision_depth: Optional[int] = None,
                         vocab_size: int = 151936):
    """Qwen2.5-VL-3B-Instruct's shapes (36 decoder layers of width 2048, 16 query / 2 key-value
    heads; a 32-block vision tower of width 1280). `num_layers` / `vision_depth` cut the depth
    for CPU benchmarks."""
    return _qwen2_5_vl_config(hidden=2048, intermediate=11008, layers=num_layers or 36, heads=16, kv_heads=2,
                              vocab_size=vocab_size, tie_embeddings=True, vision_depth=vision_depth or 32)


def qwen2_5_vl_7b_config(num_layers: Optional[int] = None, vision_depth: Optional[int] = None,
                         vocab_size: int = 152064):
    """Qwen2.5-VL-7B-Instruct's shapes (28 decoder layers of width 3584, 28 query / 4 key-value
    heads; the same vision tower with a 3584-wide merger)."""
    return _qwen2_5_vl_config(hidden=3584, intermediate=18944, layers=num_layers or 28, heads=28, kv_heads=4,
                              vocab_size=vocab_size, tie_embeddings=False, vision_depth=vision_depth or 32)


def _qwen2_5_vl_config(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab_size: int,
                       tie_embeddings: bool, vision_depth: int):
    """A Qwen2.5-VL config of the released sizes: they share the vision tower (width 1280, full
    attention every 8th block) and the rotary layout, and differ in the language model."""
    from transformers import Qwen2_5_VLConfig

    text = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=128000,
                rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
    vision = dict(depth=vision_depth, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=hidden,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[i for i in (7, 15, 23, 31) if i < vision_depth] or [vision_depth - 1],
                  tokens_per_second=2)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie_embeddings)
