"""The shipped embedded weights: they load, and they still behave as their recorded calibration says."""

import json

import pytest

from gpo.evaluate import Scorers
from gpo.model.build import load_pipeline
from gpo.params import EvalFile, load
from gpo.release import load_sample, rescore_sample


def test_release_folder_is_complete(root):
    rel = root / "release"
    for name in ("base/model_index.json", "detector.pt", "base_pretrain.json", "detector_train.json",
                 "calibration.json", "calibration.md", "calibration_sample.json"):
        assert (rel / name).exists(), f"release/{name} is missing"
    assert not list(rel.rglob("*.bin")) and list((rel / "base").rglob("*.safetensors"))
    size = sum(f.stat().st_size for f in rel.rglob("*") if f.is_file())
    assert size <= 25 * 2**20, f"release is {size / 2**20:.1f} MiB, over the 25 MiB budget"
    cal = json.loads((rel / "calibration.json").read_text())
    assert all(cal["bands"].values()), f"recorded calibration is outside its bands: {cal['bands']}"


@pytest.mark.slow
def test_shipped_weights_match_recorded_calibration(root, shipped_detector, ocr_reader):
    e = load(root / "params" / "eval.yaml", EvalFile).eval
    pipe = load_pipeline(root / "release" / "base")
    sample = load_sample(root / "release")
    # the sampler the calibration was measured with (recorded in it), not whatever eval.yaml says today
    cal = json.loads((root / "release" / "calibration.json").read_text())
    s = cal.get("sampler") or {"steps": e.steps, "guidance_scale": e.guidance_scale, "solver": e.solver,
                               "precision": e.precision}
    got = rescore_sample(pipe, Scorers(shipped_detector, ocr_reader), sample, s["steps"], s["guidance_scale"],
                         s["solver"], s["precision"])
    # same prompts, seeds and sampler: the same images up to float noise across CPUs
    assert got["same_correct"] >= 0.9, got
    assert abs(got["mean_reward"] - got["recorded_mean_reward"]) <= 0.05, got
