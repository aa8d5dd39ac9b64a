"""The champion rule, as pure functions of evaluation summaries (evaluate.summarize).

headline = mean of held-out counting accuracy and held-out mean OCR reward. Its standard error comes
from the two Wilson / t intervals (half-width / 1.96), and a new model replaces the champion only when
its headline gain exceeds z standard errors of the difference of two independent evaluations.

The reward-hacking guard: where both summaries carry the second opinion (gpo/rewards/second_opinion.py,
summary keys second/<task>/<split>), each headline part's reward-model gain must be matched by the
second opinion's gain on the same part. A part whose reward-model gain exceeds the second opinion's by
more than GUARD_Z standard errors of that gap (the four intervals' SEs combined as independent:
conservative, a gap inside the evaluations' noise is never flagged), and by at least GUARD_FLOOR, flags
the round, and a flagged round is never promoted, however large its headline gain. The floor is for
ceilings: at 0.99 mean OCR reward the intervals are so narrow that two scorers differ by more than a
gap's SE on single images (the first make run on the 5,000-step base flagged +0.5 against −0.6 points);
a gap under two points of accuracy or mean reward is never called hacking (docs/second_opinion.md).
GUARD_Z is the guard's own: promotion.z says how eager promotion is (z = 0 promotes any gain), not how
sure a disagreement must be before it is called one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

Z95 = 1.959964
PARTS = (("counting/heldout", "accuracy"), ("text/heldout", "mean_reward"))


def headline(summary: dict) -> float:
    return sum(summary[k][m]["value"] for k, m in PARTS) / len(PARTS)


def headline_se(summary: dict) -> float:
    """Standard error of the headline: the parts' SEs (interval half-width / 1.96) combined as independent."""
    ses = [(summary[k][m]["high"] - summary[k][m]["low"]) / (2 * Z95) for k, m in PARTS]
    return math.sqrt(sum(s * s for s in ses)) / len(PARTS)


SECOND = "second/"  # the second opinion's summary keys: second/<task>/<split> (gpo/evaluate.py)
GUARD_Z = Z95  # the guard flags a gap beyond the 95% intervals (a module constant until params has a field)
GUARD_FLOOR = 0.02  # ... and never a gap under two points (accuracy or mean reward on a 0–1 scale)


def _se(entry: dict) -> float:
    return (entry["high"] - entry["low"]) / (2 * Z95)


@dataclass(frozen=True)
class Check:
    """One headline part: reward-model gain against the second opinion's gain over the champion."""

    part: str  # e.g. counting/heldout accuracy
    reward_gain: float
    second_gain: float
    threshold: float  # max(guard z · SE of (reward_gain − second_gain), GUARD_FLOOR)

    @property
    def unmatched(self) -> bool:
        return self.reward_gain - self.second_gain > self.threshold


def second_opinion_checks(new: dict, champion: dict, z: float = GUARD_Z) -> list[Check] | None:
    """Per headline part, the reward-model gain and the second opinion's; None when either summary lacks
    the second opinion on a part (real models, or an evaluation from before it existed)."""
    checks = []
    for key, metric in PARTS:
        if SECOND + key not in new or SECOND + key not in champion:
            return None
        rm_new, rm_old = new[key][metric], champion[key][metric]
        so_new, so_old = new[SECOND + key][metric], champion[SECOND + key][metric]
        se = math.sqrt(sum(_se(e) ** 2 for e in (rm_new, rm_old, so_new, so_old)))
        checks.append(Check(f"{key} {metric}", rm_new["value"] - rm_old["value"],
                            so_new["value"] - so_old["value"], max(z * se, GUARD_FLOOR)))
    return checks


@dataclass(frozen=True)
class Decision:
    promote: bool
    gain: float  # headline(new) − headline(champion)
    threshold: float  # z · SE of the difference
    reason: str
    flagged: bool = False  # a reward-model gain the second opinion does not match: never promoted
    second_gain: float | None = None  # the second opinion's headline gain (None: no second opinion)
    unmatched: tuple[str, ...] = ()  # the headline parts whose reward-model gain is unmatched

    def to_dict(self) -> dict:
        d = asdict(self)
        d["unmatched"] = list(self.unmatched)
        return d


def decide(new: dict, champion: dict, z: float, guard_z: float = GUARD_Z) -> Decision:
    """Promote when the headline gain exceeds z SEs and the second opinion matches it (`guard_z`)."""
    gain = headline(new) - headline(champion)
    threshold = z * math.sqrt(headline_se(new) ** 2 + headline_se(champion) ** 2)
    beats = gain > threshold
    checks = second_opinion_checks(new, champion, guard_z)
    unmatched = tuple(c.part for c in checks or [] if c.unmatched)
    flagged = bool(unmatched)
    promote = beats and not flagged
    verb = "beats" if beats else "does not beat"
    reason = (f"headline {headline(new):.4f} {verb} champion {headline(champion):.4f} by more than "
              f"{threshold:.4f} (z = {z} × SE; gain {gain:+.4f})")
    second_gain = None
    if checks is None:
        reason += "; no second opinion to check it against"
    else:
        second_gain = sum(c.second_gain for c in checks) / len(checks)
        if flagged:
            reason += ("; FLAGGED, not promoted: the second opinion does not match the reward-model gain on " +
                       ", ".join(f"{c.part} ({c.reward_gain:+.4f} vs {c.second_gain:+.4f}, gap > {c.threshold:.4f})"
                                 for c in checks if c.unmatched))
        else:
            reason += f"; the second opinion agrees (its gain {second_gain:+.4f})"
    return Decision(promote, gain, threshold, reason, flagged, second_gain, unmatched)
