"""Evaluation grids: each tile says what was asked and what the reward model found, and its frame says
whether that is right (green), wrong (red) or a failed scoring (grey)."""

import numpy as np
import pytest
from PIL import Image

from gpo.grids import BORDER, FAILED, RIGHT, WRONG, asked_found, judged_grid, verdict

ROWS = [
    {"task": "counting", "count": 3, "word": None, "raw": "k=3", "correct": True, "error": None},
    {"task": "counting", "count": 4, "word": None, "raw": "k=2", "correct": False, "error": None},
    {"task": "text", "count": float("nan"), "word": "CAT", "raw": "CAI", "correct": False, "error": None},
    {"task": "text", "count": float("nan"), "word": "DOG", "raw": "", "correct": False, "error": "ocr crashed"},
]


def test_each_tile_says_asked_and_found():
    assert [asked_found(r) for r in ROWS] == [("asked 3", "found 3"), ("asked 4", "found 2"),
                                              ("asked CAT", "read CAI"), ("asked DOG", "read: failed")]
    assert asked_found({**ROWS[2], "raw": " "}) == ("asked CAT", "read (nothing)")
    assert [verdict(r) for r in ROWS] == ["right", "wrong", "wrong", "failed"]


def test_frames_are_green_for_right_red_for_wrong_grey_for_failed(tmp_path):
    images = [Image.new("RGB", (32, 32), (255, 255, 255)) for _ in ROWS]
    path = judged_grid(images, ROWS, tmp_path / "grid.png", cols=4, scale=3, title="model: counting")
    sheet = np.asarray(Image.open(path).convert("RGB"))
    tile_w = 32 * 3 + 2 * BORDER + 4
    assert sheet.shape[1] == 4 * tile_w
    header = 2 * 12 + 6
    for i, colour in enumerate((RIGHT, WRONG, WRONG, FAILED)):
        x = i * tile_w + 2
        left_frame = sheet[header + 20, x + 1]  # inside the frame, left of the image
        inside = sheet[header + 20, x + BORDER + 10]  # the (white) image itself
        assert tuple(left_frame) == colour and tuple(inside) == (255, 255, 255), i


def test_one_row_per_image(tmp_path):
    with pytest.raises(ValueError, match="one score row per image"):
        judged_grid([Image.new("RGB", (8, 8))], ROWS, tmp_path / "g.png")
