"""What the vision-language grounder asks the model, and how it reads the answers.

Owns the prompt texts of DecAF (object, category choice, background) and SteerSeg
(chain-of-thought attributes, attribute-guided grounding question), the expression formatting
both methods share, the parsing of generated text into a class word and attributes, and the
visibility question of the optional "is the object in view" check with its answer words. Plain
Python: no model needed, so the wording and parsing are testable on their own.

DecAF's three texts are its authors' own, word for word (HYUNJS/DecAF at commit 6c9766c,
`evaluation/inf_utils.py`: PROMPT_TMPL_OBJ_CLS, PROMPT_TMPL_OBJ_CHOICE, PROMPT_TMPL_BACKGROUND),
and so is the way they are filled in (`evaluation/llm_prompting_utils.py`): the paper's prompt
ablation moves J&F by 1-5 points, so the wording is part of the method. The background text says
"video" for the per-frame images too, as theirs does.
"""
from __future__ import annotations

import re
from typing import Sequence

OBJECT_PROMPT = (
    "{expression} \n"
    "What is the main object (or objects) referred to in the given expression or question? \n"
    "Focus on the **primary subject or agent** involved in the described action or behavior. "
    "Respond with a single word (e.g., 'cat', 'person', 'dog') that best describes the target object(s). ")
CATEGORY_PROMPT = (
    "Given:\n"
    "- Expression: '{expression}'\n"
    "- Candidate object class list: {candidates}\n"
    "Goal: Identify the object class referred to by the expression. Instructions:\n"
    "1. If the expression is **clear**, rely on it directly (e.g., 'a person driving a car' \u2192 'person').\n"
    "2. If the expression is **vague**, use the object class list to support your decision "
    "(e.g., check frequency and plausibility).\n"
    "3. Avoid defaulting to the most frequent class unless the expression lacks clarity.\n"
    "Output the most likely referred object class - just the label.\n")
BACKGROUND_PROMPT = ("Describe the background scene of the video, excluding any {class_name}. "
                     "Answer the question using a single word or phrase.")
STEERED_QUESTION = ("What is the main object mentioned in the given expression, using the attributes "
                    "above? Answer in one word.")
ATTRIBUTE_PROMPT = ("Expression: {expression}\nDescribe the object this expression refers to in the "
                    "video by its colour, position, motion and size, briefly.")
ATTRIBUTES_LINE = "Attributes: {attributes}"
# The visibility question (not part of either method: the node's own "is it in view" check, the
# wording of the POPE hallucination benchmark that instruction-tuned VLMs are trained to answer).
# "{expression}" is the expression without its final "." / "?".
VISIBILITY_QUESTION = "Is there {expression} in the video? Answer yes or no."
# The answer words whose next-token logits the visibility check compares, as the tokenizer holds
# them when they are single tokens (Qwen's vocabulary has all four).
YES_WORDS = ("yes", "Yes")
NO_WORDS = ("no", "No")

_WORD = re.compile(r"[a-z][a-z\-]*")


def format_expression(command: str) -> str:
    """The expression as both methods feed it: lower-cased, ending in '.' unless it already ends
    in '.' or '?'."""
    text = " ".join(command.split()).lower()
    return text if text.endswith((".", "?")) else text + "."


def object_text(expression: str) -> str:
    """DecAF's object prompt for a formatted expression (lower-cased, as theirs is)."""
    return OBJECT_PROMPT.format(expression=expression.lower())


def background_text(class_name: str) -> str:
    """DecAF's background prompt, for the keyframe video and the frame images alike."""
    return BACKGROUND_PROMPT.format(class_name=class_name)


def category_text(expression: str, answers: Sequence[str]) -> str:
    """DecAF's category choice: the object prompt's whole answers (video first, then the frames),
    lower-cased and joined with "," (no space, empty answers kept), as candidates."""
    return CATEGORY_PROMPT.format(expression=expression.lower(), candidates=",".join(a.lower() for a in answers))


def class_name(answer: str) -> str:
    """The category call's answer as DecAF uses it: the whole answer, trimmed and lower-cased
    (it may be several words, or empty)."""
    return answer.strip().lower()


def attribute_text(expression: str) -> str:
    return ATTRIBUTE_PROMPT.format(expression=expression)


def steered_text_parts(expression: str, attributes: str) -> tuple[str, str]:
    """(the text before the question, the question): SteerSeg's soft tokens go between them."""
    head = expression if not attributes else f"{expression}\n{ATTRIBUTES_LINE.format(attributes=attributes)}"
    return head + "\n", STEERED_QUESTION


def visibility_text(expression: str, template: str = VISIBILITY_QUESTION) -> str:
    """The visibility question for a formatted expression: `template` with "{expression}"
    replaced by the expression less its final "." or "?" (plain replacement: other braces in a
    configured template are kept as they are)."""
    return template.replace("{expression}", expression.rstrip(".?").strip())


def template_texts() -> list[str]:
    """Every fixed prompt text (for training a test tokenizer on the words the grounder uses)."""
    return [OBJECT_PROMPT, STEERED_QUESTION, CATEGORY_PROMPT, BACKGROUND_PROMPT, ATTRIBUTE_PROMPT,
            ATTRIBUTES_LINE, "You are a helpful assistant."]


def first_word(text: str) -> str:
    """The first alphabetic word of a generated answer, lower-cased ("" when there is none)."""
    match = _WORD.search(text.lower())
    return match.group(0).strip("-") if match else ""


def parse_attributes(generated: str, max_items: int = 6, max_chars: int = 80) -> list[str]:
    """Attribute phrases from the chain-of-thought answer: its lines / sentences / ';'-separated
    parts, trimmed, at most `max_items` of at most `max_chars` characters each."""
    parts = re.split(r"[\n;]|(?<=[.!?])\s+", generated)
    items = []
    for part in parts:
        part = part.strip(" \t-*•.,:")
        if part:
            items.append(part[:max_chars])
        if len(items) >= max_items:
            break
    return items
