"""The real reward models at tiny scale: YOLO trained and used for real, EasyOCR reading for real."""

import random

import pytest
from PIL import Image

from gpo.errors import GpoError
from gpo.params import DetectorParams, WorldParams
from gpo.prompts import Prompt
from gpo.rewards.detector import Detector, train_detector, write_yolo_dataset
from gpo.rewards.ocr import OcrReader
from gpo.world.dataset import build_prompts
from gpo.world.render import render


def test_yolo_dataset_labels(tmp_path):
    world = WorldParams()
    data = write_yolo_dataset(tmp_path, world, DetectorParams(train_images=8, val_images=4, imgsz=64))
    assert "names:" in data.read_text() and "circle" in data.read_text()
    labels = sorted((tmp_path / "labels" / "train").glob("*.txt"))
    assert len(labels) == 8
    for f in labels:
        for row in f.read_text().split("\n"):
            if row:
                cls, *box = row.split()
                assert int(cls) in (0, 1, 2) and all(0 < float(v) <= 1 for v in box)


@pytest.mark.slow
def test_tiny_yolo_trains_and_predicts(tmp_path):
    world = WorldParams()
    p = DetectorParams(train_images=16, val_images=8, epochs=2, batch=8, imgsz=64)
    weights = train_detector(world, p, tmp_path / "det", progress=False)
    assert weights.exists() and (tmp_path / "det" / "detector_train.json").exists()
    det = Detector(weights, imgsz=64, conf=0.01)
    prompts = [q for q in build_prompts(world.prompts) if q.task == "counting"][:4]
    images = [render(q, i).image for i, q in enumerate(prompts)]
    counts = det.count(images, [q.cls for q in prompts])
    assert len(counts) == 4 and all(isinstance(c, int) and c >= 0 for c in counts)
    scores = det.score(images, prompts)
    assert all(0.0 <= s.reward <= 1.0 and s.raw.startswith("k=") for s in scores)


def test_shipped_detector_counts_rendered_shapes(shipped_detector):
    world = WorldParams()
    held = [q for q in build_prompts(world.prompts) if q.task == "counting" and q.split == "heldout"]
    rng = random.Random(5)
    chosen = [held[i % len(held)] for i in range(36)]
    scores = shipped_detector.score([render(q, rng.randrange(10**6)).image for q in chosen], chosen)
    assert sum(s.correct for s in scores) >= 34  # calibration says 1.00 on n=300


def test_scoring_leaves_torch_its_threads_and_subprocesses_their_omp_threads():
    """ultralytics sets torch's threads to cpu_count − 1 (1 on a 2-core machine) when a model's predictor is
    set up (its first predict), and OMP_NUM_THREADS=1 when imported; the detector gives the threads back,
    so the sampler and EasyOCR after a scoring run on every core, and no child process inherits 1 thread.
    A fresh detector: the session's shared one has set up its predictor already."""
    import os

    import torch
    from ultralytics.utils import NUM_THREADS

    from tests.conftest import ROOT

    before = torch.get_num_threads()
    mine = NUM_THREADS + 1  # what ultralytics would not leave
    torch.set_num_threads(mine)
    try:
        det = Detector(ROOT / "release" / "detector.pt")
        prompts = [q for q in build_prompts(WorldParams().prompts) if q.task == "counting"][:2]
        det.score([render(q, 0).image for q in prompts], prompts)
        assert torch.get_num_threads() == mine
    finally:
        torch.set_num_threads(before)
    assert os.environ.get("OMP_NUM_THREADS") != "1"


def test_detector_errors(tmp_path, shipped_detector):
    with pytest.raises(GpoError, match="not found"):
        Detector(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(GpoError, match="cannot load YOLO weights"):
        Detector(bad)
    with pytest.raises(GpoError, match="cannot count 'cup'"):
        shipped_detector.class_id("cup")


def test_easyocr_reads_rendered_words(ocr_reader):
    words = ["CAT", "DOG", "SUN", "BOX", "ZIP", "OWL"]
    prompts = [Prompt(text=f'the word "{w}"', task="text", split="heldout", word=w) for w in words]
    scores = ocr_reader.score([render(p, i).image for i, p in enumerate(prompts)], prompts)
    assert sum(s.correct for s in scores) >= 5
    blank = ocr_reader.score([Image.new("RGB", (32, 32), "white")], prompts[:1])[0]
    assert blank.reward == 0.0 and not blank.correct and blank.raw == ""


def test_ocr_missing_weights_is_clear(tmp_path):
    with pytest.raises(GpoError, match="EasyOCR weights missing"):
        OcrReader(model_dir=tmp_path)
