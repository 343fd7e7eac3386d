"""Frame sources for the tools: a folder of images or a video file, read one frame at a time.

Owns the naming of frames (a folder's file stems, sorted; a video's frame numbers as
zero-padded five-digit names like DAVIS's) that the demo's output masks are named after.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


class FrameSource:
    """(name, BGR uint8 image) pairs from `frames` (a folder) or `video` (a file), in order.
    Iterating again starts from the first frame. `limit` keeps the first `limit` frames."""

    def __init__(self, frames: Optional[str | Path] = None, video: Optional[str | Path] = None,
                 limit: Optional[int] = None):
        if (frames is None) == (video is None):
            raise ValueError("give exactly one of a frame folder or a video file")
        self.limit = limit
        self.frames_dir = Path(frames) if frames is not None else None
        self.video = Path(video) if video is not None else None
        if self.frames_dir is not None:
            if not self.frames_dir.is_dir():
                raise FileNotFoundError(f"frame folder {self.frames_dir} does not exist")
            self._files = sorted(p for p in self.frames_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if limit is not None:
                self._files = self._files[:limit]
            if not self._files:
                raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {self.frames_dir}")
        else:
            if not self.video.is_file():
                raise FileNotFoundError(f"video file {self.video} does not exist")
            capture = cv2.VideoCapture(str(self.video))
            ok = capture.isOpened()
            self._video_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if ok else 0
            self.video_fps = float(capture.get(cv2.CAP_PROP_FPS)) if ok else 0.0
            capture.release()
            if not ok:
                raise ValueError(f"OpenCV cannot open the video {self.video}")

    def __len__(self) -> int:
        """The number of frames (for a video, the count its header gives)."""
        if self.frames_dir is not None:
            return len(self._files)
        return self._video_count if self.limit is None else min(self._video_count, self.limit)

    def names(self) -> list[str]:
        if self.frames_dir is not None:
            return [p.stem for p in self._files]
        return [name for name, _ in self]  # a video's length is only known by reading it

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        if self.frames_dir is not None:
            for path in self._files:
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is None:
                    raise ValueError(f"cannot read image {path}")
                yield path.stem, image
            return
        capture = cv2.VideoCapture(str(self.video))
        try:
            index = 0
            while self.limit is None or index < self.limit:
                ok, image = capture.read()
                if not ok:
                    break
                yield f"{index:05d}", image
                index += 1
        finally:
            capture.release()
