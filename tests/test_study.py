"""The loss-arm study's pure core (gpo/study.py) against hand-computed values; its DVC/MLflow edges are the
real tools run by `gpo study run` (the tracking tags it filters by are tested in test_tracking.py)."""

import math
import subprocess

import pandas as pd
import pytest
import torch

from gpo.loss import ARMS
from gpo.study import (Run, agreement, arm_rows, budget_overrides, exp_name, near_tie_share, paired_delta, plot_spec, render,
                       require_complete, experiments_from_refs, study_overrides)
from gpo.errors import GpoError

# one group: rewards 0.50, 0.52, 0.90; pairs with r_i > r_j: (0.52>0.50: gap .02, a near tie),
# (0.90>0.50: .40), (0.90>0.52: .38)
R = torch.tensor([[0.50, 0.52, 0.90]])


def test_near_tie_share_by_arm_hand_computed():
    # group-unweighted: 3 pairs of weight 1, one near tie
    assert near_tie_share(R, "group-unweighted") == pytest.approx(1 / 3)
    # dpo: only best vs worst (0.90 vs 0.50), not a near tie
    assert near_tie_share(R, "dpo") == 0.0
    # dpo-random: each of the 3 candidate pairs equally likely
    assert near_tie_share(R, "dpo-random") == pytest.approx(1 / 3)
    # gpo: weight A_i − A_j. mean .64, population sd = sqrt(((−.14)²+(−.12)²+(.26)²)/3)
    sd = math.sqrt((0.14 ** 2 + 0.12 ** 2 + 0.26 ** 2) / 3)
    a = [(-0.14) / (sd + 1e-4), (-0.12) / (sd + 1e-4), 0.26 / (sd + 1e-4)]
    w_tie, w_far = a[1] - a[0], (a[2] - a[0]) + (a[2] - a[1])
    assert near_tie_share(R, "gpo") == pytest.approx(w_tie / (w_tie + w_far), rel=1e-6)
    assert near_tie_share(R, "gpo") < near_tie_share(R, "group-unweighted")  # the weights discount near ties
    assert near_tie_share(R, "dgpo") is None  # no pairs


def test_near_tie_share_skips_groups_without_spread():
    flat = torch.tensor([[0.3, 0.3, 0.3]])
    assert near_tie_share(flat, "gpo") is None
    assert near_tie_share(torch.cat([flat, R]), "group-unweighted") == pytest.approx(1 / 3)


def _table(correct: list[bool], reward: list[float]) -> pd.DataFrame:
    n = len(correct)
    return pd.DataFrame({"prompt": ["p"] * n, "seed": list(range(n)), "task": ["counting"] * n,
                         "split": ["heldout"] * n, "correct": correct, "reward": reward})


def test_paired_delta_matches_images_by_prompt_and_seed():
    a = _table([True, True, False, True], [1, 1, 0, 1])
    b = _table([True, False, False, False], [1, 0, 0, 0]).iloc[::-1]  # order must not matter
    d = paired_delta(a, b, "counting", "correct")
    assert d["value"] == pytest.approx(0.5)  # per image: 0, 1, 0, 1
    half = 1.959964 * math.sqrt(1 / 3) / 2  # sample sd of (0, 1, 0, 1) = sqrt(1/3)
    assert d["low"] == pytest.approx(0.5 - half, abs=1e-4) and d["high"] == pytest.approx(0.5 + half, abs=1e-4)


def _run(arm, seed, acc, exact=0.1, reward=0.5):
    return Run(exp_name(arm, seed), arm, seed,
               {"counting_heldout_accuracy": acc, "text_heldout_accuracy": exact, "text_heldout_mean_reward": reward},
               {"generate": 60, "score": 60, "train": 120, "evaluate": 999})


def test_arm_rows_mean_sd_delta_and_gpo_minutes():
    base = {"counting_heldout_accuracy": 0.5, "text_heldout_accuracy": 0.1, "text_heldout_mean_reward": 0.5}
    rows = arm_rows([_run("dpo", 1, 0.60), _run("gpo", 0, 0.55), _run("dpo", 0, 0.50)], base)
    assert [r["arm"] for r in rows] == ["gpo", "dpo"]  # ARMS order
    dpo = rows[1]
    assert dpo["seeds"] == [0, 1] and dpo["counting_heldout_accuracy"]["values"] == [0.50, 0.60]
    assert dpo["counting_heldout_accuracy"]["mean"] == pytest.approx(0.55)
    assert dpo["counting_heldout_accuracy"]["sd"] == pytest.approx(math.sqrt(0.005))
    assert dpo["counting_heldout_accuracy"]["delta"] == pytest.approx(0.05)
    assert dpo["gpo_minutes"] == pytest.approx(4.0)  # evaluation not counted
    assert rows[0]["counting_heldout_accuracy"]["sd"] == 0.0  # one seed


def test_render_table_and_plot_from_runs():
    base = {"counting_heldout_accuracy": 0.5, "text_heldout_accuracy": 0.1, "text_heldout_mean_reward": 0.5}
    groups = pd.DataFrame({"group": [0, 0, 0], "task": ["counting"] * 3, "reward": [0.50, 0.52, 0.90],
                           "dropped": [False] * 3})
    tb = _table([False, False, True, True], [0, 0, 1, 1])
    runs = []
    for arm, acc in (("gpo", [True, True, True, False]), ("dpo", [True, False, True, False])):
        r = _run(arm, 0, sum(acc) / 4)
        r.table, r.groups = _table(acc, [float(x) for x in acc]), groups
        runs.append(r)
    md, data = render(runs, base, tb, "gpo study run")
    lines = md.splitlines()
    assert lines[2].startswith("| base |") and lines[3].startswith("| gpo | 1 | 0.750 ± 0.000")
    dpo = data["arms"][1]
    assert dpo["paired_vs_gpo"]["counting"]["value"] == pytest.approx(-0.25)  # 1 of 4 images lost
    assert dpo["paired_vs_base_counting"]["value"] == pytest.approx(0.0)
    assert dpo["near_tie_share"] == {"counting": 0.0, "text": None}
    spec = plot_spec(data)
    assert len(spec["data"]["values"]) == 2 * 3 * 2  # runs × metrics × (base, result)
    assert {v["minutes"] for v in spec["data"]["values"]} == {0.0, 4.0}


def test_finished_experiments_found_in_their_git_refs(tmp_path):
    """DVC keeps every finished experiment as refs/exps/…/NAME; its params are in the commit."""
    run = lambda *a: subprocess.run(a, cwd=tmp_path, check=True, capture_output=True, text=True).stdout  # noqa: E731
    run("git", "init", "-q")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "gpo.yaml").write_text("train:\n  arm: dpo\n  seed: 1\n")
    run("git", "add", "-A")
    run("git", "-c", "user.email=t@e.org", "-c", "user.name=t", "commit", "-qm", "exp")
    rev = run("git", "rev-parse", "HEAD").strip()
    run("git", "update-ref", "refs/exps/ab/cdef0123/study-dpo-s1", rev)
    run("git", "update-ref", "refs/exps/ab/cdef0123/other-exp", rev)
    found = experiments_from_refs(tmp_path)
    assert found == {"study-dpo-s1": {"rev": rev, "arm": "dpo", "seed": 1, "error": None}}
    with pytest.raises(GpoError, match="study-gpo-s1"):
        require_complete(found, ["gpo", "dpo"], [1])
    require_complete(found, ["dpo"], [1])


def test_overrides_give_every_arm_the_same_budget(tmp_path):
    o = budget_overrides(tmp_path)
    assert o["gpo.yaml:groups.iterations"] == 1 and o["run.yaml:mlflow.model_name"] == "gpo-study"
    assert o["run.yaml:mlflow.tracking_uri"] == f"sqlite:///{tmp_path.resolve() / 'mlflow' / 'mlflow.db'}"
    sets = {arm: study_overrides(arm, 2) for arm in ARMS}
    assert all(set(s) == {"gpo.yaml:train.arm", "gpo.yaml:train.seed", "gpo.yaml:groups.seed"} for s in sets.values())
    assert {s["gpo.yaml:groups.seed"] for s in sets.values()} == {2}  # same groups for every arm of a seed


def test_agreement_of_the_second_opinion():
    t = _table([True, True, False, False], [1, 1, 0, 0])
    assert agreement(t, "counting") is None  # no second opinion in the table
    t["second_correct"] = [True, False, False, None]  # 2 of the 3 judged images agree
    assert agreement(t, "counting") == pytest.approx(2 / 3)
