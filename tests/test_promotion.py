"""The champion rule (gpo/promotion.py) against hand-computed values."""

import pytest

from gpo.promotion import decide, headline, headline_se


def summary(acc, acc_ci, ocr, ocr_ci):
    return {"counting/heldout": {"accuracy": {"value": acc, "low": acc - acc_ci, "high": acc + acc_ci}},
            "text/heldout": {"mean_reward": {"value": ocr, "low": ocr - ocr_ci, "high": ocr + ocr_ci}}}


def test_headline_and_its_standard_error_by_hand():
    s = summary(0.5, 0.05, 0.6, 0.03)
    assert headline(s) == pytest.approx(0.55)
    # SEs 0.05/1.96 = 0.025510 and 0.03/1.96 = 0.015306; sqrt(sum of squares)/2 = 0.014875
    assert headline_se(s) == pytest.approx(0.014875, abs=1e-6)


def test_gain_must_exceed_z_standard_errors_of_the_difference():
    champ = summary(0.5, 0.05, 0.6, 0.03)
    # threshold for z = 1: sqrt(2) · 0.014875 = 0.021036
    assert not decide(summary(0.52, 0.05, 0.62, 0.03), champ, 1.0).promote  # gain 0.020
    d = decide(summary(0.523, 0.05, 0.62, 0.03), champ, 1.0)  # gain 0.0215
    assert d.promote and d.threshold == pytest.approx(0.021036, abs=1e-6)
    assert d.gain == pytest.approx(0.0215)


@pytest.mark.parametrize("z", [0.0, 1.0, 2.0])
def test_a_worse_or_equal_model_is_never_promoted(z):
    champ = summary(0.5, 0.05, 0.6, 0.03)
    assert not decide(summary(0.49, 0.05, 0.6, 0.03), champ, z).promote
    assert not decide(champ, champ, z).promote
    assert "does not beat" in decide(summary(0.3, 0.05, 0.6, 0.03), champ, z).reason


def test_z_zero_promotes_any_gain():
    champ = summary(0.5, 0.05, 0.6, 0.03)
    assert decide(summary(0.501, 0.05, 0.6, 0.03), champ, 0.0).promote


def test_overrides_set_params_like_dvc_exp_and_name_bad_keys(tmp_path):
    from gpo import params as P
    from gpo.errors import GpoError
    from gpo.stages import Workspace, apply_overrides

    P.write_defaults(tmp_path / "params")
    ws = Workspace.default(tmp_path)
    changed = apply_overrides(ws, {"gpo.yaml:train.lr": 3e-5, "params/run.yaml:promotion.z": 0.5})
    assert changed == ["gpo.yaml:train.lr", "run.yaml:promotion.z"]
    assert ws.load("gpo.yaml").train.lr == 3e-5 and ws.load("run.yaml").promotion.z == 0.5
    assert "# AdamW learning rate" in (tmp_path / "params" / "gpo.yaml").read_text()  # comments kept
    for bad, match in (({"gpo.yaml:train.lrr": 1}, "no such key"), ({"train.lr": 1}, "FILE:section.key"),
                       ({"gpo.yaml:train.lr": -1}, "gpo.yaml")):
        with pytest.raises(GpoError, match=match):
            apply_overrides(ws, bad)


# --- the reward-hacking guard: the second opinion must match the reward-model gain ------------------
def with_second(s, acc, acc_ci, ocr, ocr_ci):
    second = summary(acc, acc_ci, ocr, ocr_ci)
    return {**s, "second/counting/heldout": second["counting/heldout"], "second/text/heldout": second["text/heldout"]}


def test_a_reward_gain_the_second_opinion_does_not_see_is_flagged_and_not_promoted():
    champ = with_second(summary(0.5, 0.05, 0.6, 0.03), 0.5, 0.05, 0.6, 0.03)
    new = with_second(summary(0.7, 0.05, 0.6, 0.03), 0.5, 0.05, 0.6, 0.03)  # +0.20 counting, second sees +0
    d = decide(new, champ, 1.0, guard_z=1.0)
    assert d.gain == pytest.approx(0.1) and d.gain > d.threshold  # the headline alone would promote
    # gap 0.20 on counting; its threshold: z · sqrt(4 · (0.05/1.96)²) = 2 · 0.025510 = 0.051021
    assert d.flagged and not d.promote and d.unmatched == ("counting/heldout accuracy",)
    assert d.second_gain == pytest.approx(0.0) and "FLAGGED" in d.reason and "0.0510" in d.reason
    assert d.to_dict()["unmatched"] == ["counting/heldout accuracy"] and d.to_dict()["flagged"] is True


def test_the_gap_must_exceed_z_standard_errors_of_the_four_intervals():
    champ = with_second(summary(0.5, 0.05, 0.6, 0.03), 0.5, 0.05, 0.6, 0.03)
    # counting gap threshold at z = 1: 0.051021 (above); the second opinion sees +0.15 of +0.20
    inside = decide(with_second(summary(0.7, 0.05, 0.6, 0.03), 0.65, 0.05, 0.6, 0.03), champ, 1.0, guard_z=1.0)
    assert not inside.flagged and inside.promote and inside.second_gain == pytest.approx(0.075)
    # +0.148 of +0.20: gap 0.052 > 0.051021
    outside = decide(with_second(summary(0.7, 0.05, 0.6, 0.03), 0.648, 0.05, 0.6, 0.03), champ, 1.0, guard_z=1.0)
    assert outside.flagged and not outside.promote
    # text: its threshold sqrt(4 · (0.03/1.96)²) = 0.030612; +0.05 of reward seen as +0.015: gap 0.035
    text = decide(with_second(summary(0.5, 0.05, 0.65, 0.03), 0.5, 0.05, 0.615, 0.03), champ, 1.0, guard_z=1.0)
    assert text.flagged and text.unmatched == ("text/heldout mean_reward",)


def test_at_a_ceiling_a_gap_under_the_floor_is_not_flagged_and_a_real_one_still_is():
    # text at 0.99 with ±0.004 intervals: the reward model +0.005, the second opinion −0.006 (the first
    # make run on the 5,000-step base). The gap 0.011 exceeds 1.96 SEs, sqrt(4·(0.004/1.96)²)·1.96 = 0.008,
    # but not the floor GUARD_FLOOR = 0.02
    champ = with_second(summary(0.5, 0.05, 0.99, 0.004), 0.5, 0.05, 0.99, 0.004)
    ceiling = decide(with_second(summary(0.6, 0.05, 0.995, 0.004), 0.6, 0.05, 0.984, 0.004), champ, 1.0)
    assert not ceiling.flagged and ceiling.promote
    # the reward model flat at the ceiling while the second opinion falls to 0.90 (strokes EasyOCR reads
    # as letters and nothing else does): gap 0.09, flagged, though the reward model shows no gain there
    hack = decide(with_second(summary(0.6, 0.05, 0.99, 0.004), 0.6, 0.05, 0.90, 0.004), champ, 1.0)
    assert hack.flagged and not hack.promote and hack.unmatched == ("text/heldout mean_reward",)
    # a gap just over the floor (+0.015 vs −0.006 = 0.021) is flagged
    champ = with_second(summary(0.5, 0.05, 0.97, 0.004), 0.5, 0.05, 0.97, 0.004)
    over = decide(with_second(summary(0.6, 0.05, 0.985, 0.004), 0.6, 0.05, 0.964, 0.004), champ, 1.0)
    assert over.flagged and "0.0200" in over.reason


def test_the_guard_has_its_own_z_at_the_95_percent_intervals_whatever_promotion_z_is():
    champ = with_second(summary(0.5, 0.05, 0.6, 0.03), 0.5, 0.05, 0.6, 0.03)
    # counting gap 0.08: above 1 SE (0.051021) of the gap, inside 1.96 SEs (0.1) of it
    new = with_second(summary(0.7, 0.05, 0.6, 0.03), 0.62, 0.05, 0.6, 0.03)
    for z in (0.0, 1.0):  # z = 0 promotes any headline gain; it does not make the guard fire on noise
        d = decide(new, champ, z)
        assert d.promote and not d.flagged
    assert decide(new, champ, 0.0, guard_z=1.0).flagged
    assert decide(with_second(summary(0.7, 0.05, 0.6, 0.03), 0.59, 0.05, 0.6, 0.03), champ, 0.0).flagged  # gap 0.11


def test_without_a_second_opinion_the_rule_is_the_headline_alone():
    champ = summary(0.5, 0.05, 0.6, 0.03)
    d = decide(summary(0.7, 0.05, 0.6, 0.03), champ, 1.0)
    assert d.promote and not d.flagged and d.second_gain is None and "no second opinion" in d.reason
    # one side without it (an evaluation from before the second opinion): no check either
    d = decide(with_second(summary(0.7, 0.05, 0.6, 0.03), 0.5, 0.05, 0.6, 0.03), champ, 1.0)
    assert d.promote and not d.flagged


def test_a_flag_never_promotes_and_a_loss_both_see_is_not_flagged():
    champ = with_second(summary(0.5, 0.05, 0.6, 0.03), 0.5, 0.05, 0.6, 0.03)
    worse = decide(with_second(summary(0.3, 0.05, 0.6, 0.03), 0.3, 0.05, 0.6, 0.03), champ, 1.0)
    assert not worse.promote and not worse.flagged
    # the second opinion sees a larger gain than the reward model: nothing to flag
    better = decide(with_second(summary(0.6, 0.05, 0.6, 0.03), 0.8, 0.05, 0.6, 0.03), champ, 1.0)
    assert better.promote and not better.flagged
