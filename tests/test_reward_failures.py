"""A reward model that raises or returns garbage on one image: that image is marked failed with the
reason (reward NaN, never a silent 0), left out of group statistics, training and metrics; too many
failures stop the run with one clear error."""

import math

import pandas as pd
import pytest
import torch
from PIL import Image

from gpo.errors import GpoError
from gpo.evaluate import Scorers, score_table, summarize
from gpo.prompts import Prompt
from gpo.rewards.arith import Score
from gpo.scoring import add_advantages
from gpo.train import groups_from_table


class Flaky:
    """Reward = 0.1 × index; raises on image 2 (even alone), returns 1.5 on image 4."""

    def score(self, images, prompts):
        out = []
        for im in images:
            k = im.getpixel((0, 0))[0]
            if k == 2:
                raise RuntimeError("detector crashed on this image")
            out.append(Score(1.5 if k == 4 else 0.1 * k, k == 3, f"k={k}"))
        return out


def setup(n=6):
    images = [Image.new("RGB", (8, 8), (k, 0, 0)) for k in range(n)]
    prompts = [Prompt(text="three red circles", task="counting", split="train", cls="circle", color="red", count=3)] * n
    return images, prompts


def test_failures_stay_with_their_images_and_carry_the_reason():
    images, prompts = setup()
    scores = Scorers(Flaky(), Flaky(), max_failed_share=0.5).score(images, prompts)
    assert [s.error is None for s in scores] == [True, True, False, True, False, True]
    assert "RuntimeError: detector crashed" in scores[2].error and "outside [0, 1]" in scores[4].error
    assert math.isnan(scores[2].reward) and not scores[2].correct
    assert [s.reward for s in scores if not s.error] == pytest.approx([0.0, 0.1, 0.3, 0.5])


def test_failed_images_are_left_out_of_groups_training_and_metrics():
    images, prompts = setup()
    scores = Scorers(Flaky(), Flaky(), max_failed_share=0.5).score(images, prompts)
    table = pd.DataFrame({"group": 0, "prompt": prompts[0].text, "task": "counting",
                          "reward": [s.reward for s in scores], "error": [s.error for s in scores]})
    out = add_advantages(table)
    ok = out[out.error.isna()]
    assert out.group_mean.iloc[0] == pytest.approx(0.225)  # mean of 0, .1, .3, .5
    assert out.advantage[out.error.notna()].isna().all() and ok.advantage.abs().sum() > 0
    assert not out.dropped.any()
    groups = groups_from_table(out, images, encode=lambda ims: torch.zeros(len(ims), 3, 8, 8))
    assert len(groups) == 1 and groups[0].rewards.tolist() == pytest.approx([0.0, 0.1, 0.3, 0.5])
    summary = summarize(score_table(prompts, list(range(6)), scores).assign(split="heldout"))
    entry = summary["counting/heldout"]
    assert entry["failed"] == 2 and entry["accuracy"]["n"] == 4 and entry["accuracy"]["value"] == 0.25


def test_too_many_failures_stop_the_run_with_a_clear_error():
    images, prompts = setup()
    with pytest.raises(GpoError, match="(?s)failed on 2 of 6 images.*max_failed_share"):
        Scorers(Flaky(), Flaky(), max_failed_share=0.2).score(images, prompts)
