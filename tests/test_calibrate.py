"""Calibration end to end with the real reward models on a tiny random pipeline (small n)."""

import json

from gpo.calibrate import calibrate
from gpo.evaluate import Scorers
from gpo.model.build import build_pipeline
from gpo.params import EvalParams, ModelParams, WorldParams
from gpo.world.dataset import build_prompts

TINY = ModelParams(arch="unet", text_width=32, text_layers=1, unet_channels=[16, 32], attention_head_dim=8)


def test_calibrate_writes_report_metrics_and_grids(tmp_path, shipped_detector, ocr_reader):
    world = WorldParams()
    e = EvalParams(counting_seeds=1, text_seeds=1, heldout_word_seeds=1, steps=2, gt_images=12)
    result = calibrate(world, e, build_prompts(world.prompts), build_pipeline(TINY), Scorers(shipped_detector, ocr_reader),
                       tmp_path, model_name="tiny")
    report = json.loads((tmp_path / "calibration.json").read_text())
    assert report["reward_models_on_ground_truth"]["counting"]["n"] == 12
    assert report["reward_models_on_ground_truth"]["counting"]["value"] >= 0.9  # the detector on ground truth
    assert report["base_model"]["counting/heldout"]["accuracy"]["n"] == 18
    assert set(report["bands"]) and "Base model on held-out prompts" in result.markdown
    assert {"counting_heldout_accuracy", "text_heldout_mean_reward_low", "ocr_gt_accuracy"} <= set(result.metrics)
    for name in ("base_scores.parquet", "base_counting_grid.png", "base_text_grid.png", "calibration.md"):
        assert (tmp_path / name).exists()
