"""The champion rule, as pure functions of evaluation summaries (evaluate.summarize).

headline = mean of held-out counting accuracy and held-out mean OCR reward. Its standard error comes
from the two Wilson / t intervals (half-width / 1.96), and a new model replaces the champion only when
its headline gain exceeds z standard errors of the difference of two independent evaluations.
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


@dataclass(frozen=True)
class Decision:
    promote: bool
    gain: float  # headline(new) − headline(champion)
    threshold: float  # z · SE of the difference
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def decide(new: dict, champion: dict, z: float) -> Decision:
    gain = headline(new) - headline(champion)
    threshold = z * math.sqrt(headline_se(new) ** 2 + headline_se(champion) ** 2)
    promote = gain > threshold
    verb = "beats" if promote else "does not beat"
    return Decision(promote, gain, threshold,
                    f"headline {headline(new):.4f} {verb} champion {headline(champion):.4f} by more than "
                    f"{threshold:.4f} (z = {z} × SE; gain {gain:+.4f})")
