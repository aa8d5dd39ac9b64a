"""Reward arithmetic and metrics against hand-computed values (GPO.md, 'Rewards and metrics')."""

import pytest

from gpo.metrics import accuracy, mean_interval, wilson
from gpo.rewards.arith import counting_reward, counting_score, levenshtein, normalize_text, ocr_distance, ocr_reward, ocr_score


@pytest.mark.parametrize("found,requested,expected", [
    (4, 4, 1.0), (3, 4, 0.75), (5, 4, 0.75), (0, 2, 0.0), (8, 4, 0.0), (9, 4, 0.0), (2, 1, 0.0), (1, 3, 1 / 3),
])
def test_counting_reward(found, requested, expected):
    assert counting_reward(found, requested) == pytest.approx(expected)


def test_counting_score_flags_exact_only():
    assert counting_score(3, 3).correct and counting_score(3, 3).raw == "k=3"
    assert not counting_score(2, 3).correct


def test_counting_reward_rejects_nonsense():
    with pytest.raises(ValueError):
        counting_reward(1, 0)
    with pytest.raises(ValueError):
        counting_reward(-1, 2)


@pytest.mark.parametrize("a,b,d", [("kitten", "sitting", 3), ("", "abc", 3), ("abc", "abc", 0), ("ab", "ba", 2),
                                   ("flaw", "lawn", 2)])
def test_levenshtein(a, b, d):
    assert levenshtein(a, b) == d == levenshtein(b, a)


@pytest.mark.parametrize("pred,target,reward", [
    ("CAT", "CAT", 1.0), ("C A T", "cat", 1.0), ("THE CATS", "CAT", 1.0),  # substring counts
    ("CAR", "CAT", 2 / 3), ("CT", "CAT", 2 / 3), ("", "CAT", 0.0), ("DOG", "CAT", 0.0),
    ("xxxxxxxxxx", "CAT", 0.0),  # distance capped at len(target): never negative
    ("CAAT", "CAT", 2 / 3),
])
def test_ocr_reward(pred, target, reward):
    assert ocr_reward(pred, target) == pytest.approx(reward)


def test_ocr_distance_and_score():
    assert normalize_text(" Ca T\n") == "cat"
    assert ocr_distance("cxt", "CAT") == 1
    s = ocr_score("CAR", "CAT")
    assert not s.correct and s.raw == "CAR" and s.reward == pytest.approx(2 / 3)
    assert ocr_score("a CAT b", "cat").correct
    with pytest.raises(ValueError):
        ocr_reward("x", "  ")


def test_wilson_hand_computed():
    e = wilson(8, 10)  # p=0.8, z=1.96: centre 0.7167, half-width 0.2266
    assert (e.value, round(e.low, 4), round(e.high, 4), e.n) == (0.8, 0.4902, 0.9433, 10)
    e = wilson(0, 10)
    assert e.low == 0.0 and round(e.high, 4) == 0.2775
    e = wilson(10, 10)
    assert round(e.low, 4) == 0.7225 and e.high == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson(1, 0)
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_accuracy_and_overlap():
    a, b = accuracy([True] * 30 + [False] * 70), accuracy([True] * 60 + [False] * 40)
    assert a.value == 0.3 and not a.overlaps(b)
    assert a.overlaps(accuracy([True] * 35 + [False] * 65))


def test_mean_interval_hand_computed():
    e = mean_interval([0.0, 1.0, 0.5, 0.5])  # mean 0.5, sd = sqrt(0.5/3) = 0.40825, se = 0.20412
    assert e.value == 0.5 and round(e.high - e.value, 4) == round(1.959964 * 0.204124, 4)
    assert mean_interval([0.3]).low == 0.3


def test_pass_at_k_hand_computed():
    from gpo.metrics import pass_at_k, pass_at_k_curve

    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 − C(3,2)/C(4,2)
    assert pass_at_k(3, 1, 1) == pytest.approx(1 / 3)  # pass@1 = the share right
    assert pass_at_k(8, 2, 4) == pytest.approx(1 - 15 / 70)  # 1 − C(6,4)/C(8,4)
    assert pass_at_k(5, 0, 5) == 0.0 and pass_at_k(5, 5, 1) == 1.0 and pass_at_k(5, 2, 4) == 1.0
    curve = pass_at_k_curve([[True, False], [False, False], [True, True]], ks=(1, 2, 4))
    assert curve == {1: pytest.approx((0.5 + 0 + 1) / 3), 2: pytest.approx((1 + 0 + 1) / 3)}  # k=4 > 2 samples: left out
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_shaped_reward_hand_computed():
    from gpo.rewards.arith import shaped_reward

    assert shaped_reward(2 / 3, False, 0.0) == pytest.approx(2 / 3)  # w = 0: the graded reward
    assert shaped_reward(2 / 3, False, 0.5) == pytest.approx(1 / 3)  # a near miss earns half as much
    assert shaped_reward(1.0, True, 0.5) == 1.0 and shaped_reward(0.8, True, 1.0) == 1.0
    with pytest.raises(ValueError):
        shaped_reward(0.5, True, 1.5)
