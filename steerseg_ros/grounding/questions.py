"""What the vision-language grounder asks the model, and how it reads the answers.

Owns the prompt texts of DecAF (object, category choice, background) and SteerSeg
(chain-of-thought attributes, attribute-guided grounding question), the expression formatting
both methods share, and the parsing of generated text into a class word and attributes. Plain
Python: no model needed, so the wording and parsing are testable on their own.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

OBJECT_QUESTION = "What is the main object mentioned in the given expression? Answer in one word."
STEERED_QUESTION = ("What is the main object mentioned in the given expression, using the attributes "
                    "above? Answer in one word.")
CATEGORY_PROMPT = ("Expression: {expression}\nCandidate answers: {candidates}\n"
                   "Which single class name best names the object the expression refers to? "
                   "Answer with a single word.")
BACKGROUND_PROMPT = ("Describe the background scene of the {media}, excluding any {class_word}. "
                     "Answer with a single word or phrase.")
ATTRIBUTE_PROMPT = ("Expression: {expression}\nDescribe the object this expression refers to in the "
                    "video by its colour, position, motion and size, briefly.")
ATTRIBUTES_LINE = "Attributes: {attributes}"

# Words that never name an object: a fallback class word skips them.
_STOPWORDS = frozenset("""a an the of in on at to with and or is are was were be it its this that
these those which what who whom where when how from by for as into onto over under near than then
there here left right top bottom front back middle center centre one two three first second last
other some any all each very most more less big small large little tall short red green blue
yellow black white brown grey gray orange pink purple dark light moving walking running jumping
standing sitting""".split())
_WORD = re.compile(r"[a-z][a-z\-]*")


def format_expression(command: str) -> str:
    """The expression as both methods feed it: lower-cased, ending in '.' unless it already ends
    in '.' or '?'."""
    text = " ".join(command.split()).lower()
    return text if text.endswith((".", "?")) else text + "."


def object_text(expression: str) -> str:
    return f"{expression} {OBJECT_QUESTION}"


def background_text(class_word: str, media: str) -> str:
    """media: "video" or "image"."""
    return BACKGROUND_PROMPT.format(media=media, class_word=class_word or "object")


def category_text(expression: str, candidates: Sequence[str]) -> str:
    words = ", ".join(w for w in candidates if w) or "none"
    return CATEGORY_PROMPT.format(expression=expression, candidates=words)


def attribute_text(expression: str) -> str:
    return ATTRIBUTE_PROMPT.format(expression=expression)


def steered_text_parts(expression: str, attributes: str) -> tuple[str, str]:
    """(the text before the question, the question): SteerSeg's soft tokens go between them."""
    head = expression if not attributes else f"{expression}\n{ATTRIBUTES_LINE.format(attributes=attributes)}"
    return head + "\n", STEERED_QUESTION


def template_texts() -> list[str]:
    """Every fixed prompt text (for training a test tokenizer on the words the grounder uses)."""
    return [OBJECT_QUESTION, STEERED_QUESTION, CATEGORY_PROMPT, BACKGROUND_PROMPT, ATTRIBUTE_PROMPT,
            ATTRIBUTES_LINE, "You are a helpful assistant."]


def first_word(text: str) -> str:
    """The first alphabetic word of a generated answer, lower-cased ("" when there is none)."""
    match = _WORD.search(text.lower())
    return match.group(0).strip("-") if match else ""


def choose_class_word(generated: str, expression: str, candidates: Sequence[str]) -> str:
    """The class word from the category call's answer, kept only when it is one of the words the
    model was choosing from (the expression's and the object answers'); otherwise the most common
    object answer, otherwise the last content word of the expression. Never empty for an
    expression with a content word: a small or untrained model's free text must not turn into
    the background prompt's class."""
    expression_words = _WORD.findall(expression.lower())
    allowed = set(expression_words) | {w for w in candidates if w}
    word = first_word(generated)
    if word and word in allowed and word not in _STOPWORDS:
        return word
    votes = Counter(w for w in candidates if w and w not in _STOPWORDS)
    if votes:
        return votes.most_common(1)[0][0]
    content = [w for w in expression_words if w not in _STOPWORDS]
    return content[-1] if content else (expression_words[-1] if expression_words else "object")


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
