"""A real round on a tiny pipeline: generate → score → train → evaluate, files on disk, champion chain.

The reward here is a real, deterministic image statistic (brightness), so a random tiny model has
reward spread; the YOLO/EasyOCR scorers are exercised in test_reward_models.py and the calibration test.
"""

import json

import numpy as np
import pandas as pd

from gpo.evaluate import Scorers
from gpo.model.build import build_pipeline
from gpo.params import EvalParams, GpoFile, GroupParams, ModelParams, PromptParams, TrainParams
from gpo.rewards.arith import Score
from gpo.round import rounds_markdown, run_rounds
from gpo.world.dataset import build_prompts

TINY = ModelParams(arch="sd3", text_width=32, text_layers=1, dit_width=32, dit_layers=1, attention_head_dim=8)


class Brightness:
    """Reward = mean brightness; 'correct' when above 0.5."""

    def score(self, images, prompts):
        vals = [float(np.asarray(im, dtype=np.float32).mean() / 255) for im in images]
        return [Score(v, v > 0.5, f"{v:.3f}") for v in vals]


def test_two_rounds_chain_from_the_champion(tmp_path):
    base = tmp_path / "base"
    build_pipeline(TINY, seed=0).save_pretrained(base, safe_serialization=True)
    prompts = build_prompts(PromptParams())
    cfg = GpoFile(groups=GroupParams(group_size=4, prompts_per_round=4, steps=2, batch_size=16),
                  train=TrainParams(epochs=1, groups_per_step=2, lr=1e-3, beta=10.0, threads=1))
    e = EvalParams(counting_seeds=1, text_seeds=1, heldout_word_seeds=1, steps=2, batch_size=64, gt_images=10)
    s = Scorers(Brightness(), Brightness())
    rows = run_rounds(base, 2, tmp_path / "rounds", prompts, cfg, e, s, progress=False)
    assert [r["round"] for r in rows] == [0, 1, 2]
    r1 = tmp_path / "rounds" / "round-1"
    groups = pd.read_parquet(r1 / "groups" / "rewards.parquet")
    assert len(groups) == 16 and groups["seed"].is_unique
    assert {"prompt", "seed", "raw", "reward", "group_mean", "group_std", "advantage", "dropped"} <= set(groups)
    assert all((r1 / "groups" / p).exists() for p in groups["path"])
    assert (r1 / "train" / "pipeline" / "model_index.json").exists()
    record = json.loads((r1 / "eval" / "round.json").read_text())
    assert set(record["seconds"]) == {"generate", "score", "train", "evaluate"}
    assert set(record["decision"]) == {"promote", "gain", "threshold", "reason"}
    # round 2 starts from the best model so far
    champion_after_1 = rows[1]["model"] if rows[1]["champion"] else str(base)
    assert rows[2]["started_from"] == champion_after_1
    assert "| 2 |" in rounds_markdown(rows)
    # a re-run with everything done reads the records back instead of recomputing
    again = run_rounds(base, 2, tmp_path / "rounds", prompts, cfg, e, s, progress=False)
    assert [r["headline"] for r in again] == [r["headline"] for r in rows]


def test_a_corrupt_image_is_named_then_regenerated_identically(tmp_path):
    import pytest

    from gpo.errors import GpoError
    from gpo.groups import generate_groups, load_images

    pipe = build_pipeline(TINY, seed=0)
    prompts = [p for p in build_prompts(PromptParams()) if p.split == "train"][:2]
    g = GroupParams(group_size=3, steps=2, batch_size=8)
    table = generate_groups(pipe, prompts, g, 1, tmp_path, progress=False)
    victim = tmp_path / table.path[4]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])  # truncated, as a bad copy or a full disk leaves it
    with pytest.raises(GpoError, match="cannot read a generated image") as err:
        load_images(table, tmp_path)
    assert str(victim) in str(err.value)
    mtimes = {p: (tmp_path / p).stat().st_mtime_ns for p in table.path}
    generate_groups(pipe, prompts, g, 1, tmp_path, progress=False)
    changed = [p for p in table.path if (tmp_path / p).stat().st_mtime_ns != mtimes[p]]
    assert changed == [table.path[4]]  # only the corrupt image was generated again ...
    assert victim.read_bytes() == good  # ... and it is the same image (recorded seed)
