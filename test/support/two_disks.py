"""The synthetic scene of the several-targets tests (pipeline core and Follow action): a red and a
blue disk moving over a textured background (the built-in grounder reads colour words), or a
covered camera (uniform grey) for losing them."""
import cv2
import numpy as np

H, W = 120, 160
STEP_NS = 100_000_000  # 10 fps camera time
_BG = cv2.resize(np.random.default_rng(0).integers(90, 140, (H // 8, W // 8, 3)).astype(np.uint8),
                 (W, H), interpolation=cv2.INTER_NEAREST)


def scene(i: int, covered: bool = False):
    """Frame i (RGB) and the true masks of the red and the blue disk."""
    if covered:
        return np.full((H, W, 3), 110, np.uint8), None, None
    img, red, blue = _BG.copy(), np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    # Back and forth over 19 px (not a wrap-around: a disk that jumps back 19 px at once has
    # motion the built-in tracker rightly doubts, and hides for a while).
    x = 19 - abs(19 - i % 38)
    cv2.circle(img, (40 + x, 50), 14, (220, 30, 30), -1)
    cv2.circle(red, (40 + x, 50), 14, 1, -1)
    cv2.circle(img, (115 - x, 75), 14, (30, 40, 220), -1)
    cv2.circle(blue, (115 - x, 75), 14, 1, -1)
    return img, red > 0, blue > 0
