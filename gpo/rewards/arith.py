"""Reward arithmetic of GPO.md, as pure functions (no models): counting and OCR rewards."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Score:
    """One image's reward in [0, 1], whether it is exactly right, and what the scorer saw."""

    reward: float
    correct: bool
    raw: str  # detections as 'k=<found>' or the OCR reading, for the reward table
    error: str | None = None  # set when the reward model failed on this image (reward is then NaN)


def failed_score(reason: str) -> Score:
    """A reward model failure: no reward (NaN, never a silent 0), not correct, the reason kept."""
    return Score(float("nan"), False, "", reason)


def counting_reward(found: int, requested: int) -> float:
    """r = max(0, 1 − |k − n| / n): graded, so a group of near misses still carries signal."""
    if requested < 1:
        raise ValueError(f"requested count must be >= 1, got {requested}")
    if found < 0:
        raise ValueError(f"found count must be >= 0, got {found}")
    return max(0.0, 1.0 - abs(found - requested) / requested)


def counting_score(found: int, requested: int) -> Score:
    return Score(counting_reward(found, requested), found == requested, f"k={found}")


def normalize_text(s: str) -> str:
    """Lowercase and drop whitespace, in prediction and target alike."""
    return "".join(s.lower().split())


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def ocr_distance(prediction: str, target: str) -> int:
    """0 if the target is inside the prediction, else the edit distance capped at len(target)."""
    p, t = normalize_text(prediction), normalize_text(target)
    if not t:
        raise ValueError("OCR target is empty")
    if t in p:
        return 0
    return min(levenshtein(p, t), len(t))


def ocr_reward(prediction: str, target: str) -> float:
    """r = 1 − d / len(target)."""
    return 1.0 - ocr_distance(prediction, target) / len(normalize_text(target))


def ocr_score(prediction: str, target: str) -> Score:
    return Score(ocr_reward(prediction, target), normalize_text(target) in normalize_text(prediction), prediction)


def shaped_reward(graded: float, correct: bool, exact_weight: float) -> float:
    """The training reward: (1 − w)·graded + w·[exactly right]. w = 0 is the graded reward of GPO.md; w > 0
    pays more for the exact count or word than for near misses, which partial credit lets a model farm
    (common letters in any word, one object fewer). Metrics always use the graded reward."""
    if not 0.0 <= exact_weight <= 1.0:
        raise ValueError(f"exact_weight must be in [0, 1], got {exact_weight}")
    return (1.0 - exact_weight) * graded + exact_weight * float(bool(correct))
