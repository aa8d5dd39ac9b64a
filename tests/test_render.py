"""The renderer's labels match its pixels."""

import numpy as np
import pytest

from gpo.prompts import Prompt
from gpo.world.render import COLORS, RenderSpec, render, render_counting, render_text


@pytest.mark.parametrize("count", [1, 3, 6])
@pytest.mark.parametrize("cls", ["circle", "square", "triangle"])
def test_counting_labels(count, cls):
    p = Prompt(text="x", task="counting", split="train", cls=cls, color="blue", count=count)
    spec = RenderSpec()
    for seed in range(5):
        r = render_counting(p, seed, spec)
        assert r.image.size == (spec.size, spec.size) and len(r.boxes) == count
        for i, a in enumerate(r.boxes):
            assert a.cls == cls and 0 <= a.x0 < a.x1 <= spec.size and 0 <= a.y0 < a.y1 <= spec.size
            assert spec.min_object <= a.x1 - a.x0 <= spec.max_object
            for b in r.boxes[i + 1:]:  # non-overlapping, with the gap
                assert (a.x1 + spec.gap <= b.x0 + 1e-6 or b.x1 + spec.gap <= a.x0 + 1e-6 or
                        a.y1 + spec.gap <= b.y0 + 1e-6 or b.y1 + spec.gap <= a.y0 + 1e-6)
        # the pixel at each box centre has the shape's colour (triangles: a bit below the centre)
        arr = np.asarray(r.image).astype(int)
        for b in r.boxes:
            cx, cy = int((b.x0 + b.x1) / 2), int(b.y0 + 0.65 * (b.y1 - b.y0))
            assert np.abs(arr[cy, cx] - np.array(COLORS["blue"])).max() < 40
        # outside every box it is background (light)
        mask = np.ones(arr.shape[:2], bool)
        for b in r.boxes:
            mask[int(b.y0):int(np.ceil(b.y1)), int(b.x0):int(np.ceil(b.x1))] = False
        assert arr[mask].min() >= spec.background_min - 1


def test_render_is_deterministic_and_seed_dependent():
    p = Prompt(text="x", task="counting", split="train", cls="circle", color="red", count=4)
    a, b, c = render(p, 1), render(p, 1), render(p, 2)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_text_label_and_ink_inside_box():
    p = Prompt(text='a sign that says "CAT"', task="text", split="train", word="cat")
    r = render_text(p, 3)
    assert r.text == "CAT" and len(r.boxes) == 1
    arr = np.asarray(r.image).astype(int).sum(-1)
    b = r.boxes[0]
    dark = np.argwhere(arr < 300)  # ink pixels
    assert len(dark) > 30
    assert dark[:, 0].min() >= int(b.y0) - 1 and dark[:, 0].max() <= b.y1 + 1
    assert dark[:, 1].min() >= int(b.x0) - 1 and dark[:, 1].max() <= b.x1 + 1


def test_impossible_layout_is_a_clear_error():
    p = Prompt(text="x", task="counting", split="train", cls="square", color="red", count=40)
    with pytest.raises(ValueError, match="cannot place 40 shapes"):
        render_counting(p, 0, RenderSpec(size=32))
