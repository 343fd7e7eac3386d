"""The scores behind the vision-language grounder's "in view" check that need no model: the
object-against-background attention share (fusion.contrast_mass) and the visibility question's
wording (questions.visibility_text)."""
import numpy as np
import pytest

from steerseg_ros.grounding import fusion, questions


def test_contrast_mass_is_the_share_the_background_does_not_explain():
    rng = np.random.default_rng(0)
    bg = rng.random((2, 6, 8)).astype(np.float32)
    # The same attention (at any scale): nothing beyond the background.
    assert fusion.contrast_mass(3.0 * bg, bg) == pytest.approx(0.0, abs=1e-6)  # float32 maps
    # Attention where the background has none: all of it.
    obj = np.zeros_like(bg)
    obj[0, 2, 3] = 1.0
    only_bg = bg.copy()
    only_bg[0, 2, 3] = 0.0
    assert fusion.contrast_mass(obj, only_bg) == pytest.approx(1.0)
    # Half on a spot of its own, half spread like the background: one half.
    mixed = 0.5 * obj + 0.5 * only_bg / only_bg.sum()
    assert fusion.contrast_mass(mixed, only_bg) == pytest.approx(0.5)
    # Smoothing first (kernel > 1) spreads the spot over its neighbours, which the background
    # shares: less than without.
    assert 0.0 < fusion.contrast_mass(mixed, only_bg, kernel=3) < 0.5
    assert np.isnan(fusion.contrast_mass(np.zeros_like(bg), bg))
    with pytest.raises(ValueError, match="shape"):
        fusion.contrast_mass(bg, bg[:1])


def test_visibility_question_wording():
    expression = questions.format_expression("The Black Swan")
    assert questions.visibility_text(expression) == "Is there the black swan in the video? Answer yes or no."
    assert questions.visibility_text("which one is moving?", "Can you see {expression}? {x}") == \
        "Can you see which one is moving? {x}"
