"""Grounding backends: turn a command and keyframes into maps and point prompts."""
from steerseg_ros.grounding.base import (  # noqa: F401
    MAX_COMMAND_CHARS, Grounder, GroundingError, GroundingResult, ModelUnavailableError,
    PointPrompt, clean_command)
