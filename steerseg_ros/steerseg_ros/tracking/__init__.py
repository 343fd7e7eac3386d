"""Tracking backends: propagate object masks frame by frame."""
from steerseg_ros.tracking.base import (  # noqa: F401
    MaskCandidate, ObjectMask, ObjectState, Tracker, TrackerError)
