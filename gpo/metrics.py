"""Accuracy metrics with 95% intervals: Wilson for proportions, normal approximation for means."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"

    def as_dict(self) -> dict:
        return asdict(self)

    def overlaps(self, other: "Estimate") -> bool:
        return not (self.high < other.low or other.high < self.low)


def wilson(successes: int, n: int, z: float = Z95) -> Estimate:
    """Wilson score interval for a proportion; well-behaved at 0, 1 and small n."""
    if n <= 0:
        raise ValueError("Wilson interval needs n >= 1")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n], got {successes} of {n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def accuracy(flags: Iterable[bool]) -> Estimate:
    flags = list(flags)
    return wilson(sum(bool(f) for f in flags), len(flags))


def mean_interval(values: Iterable[float], z: float = Z95) -> Estimate:
    """Mean with a normal-approximation 95% interval (sample std, ddof=1)."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("mean of no values")
    m = sum(xs) / n
    if n == 1:
        return Estimate(m, m, m, 1)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    half = z * sd / math.sqrt(n)
    return Estimate(m, m - half, m + half, n)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 − C(n−c, k)/C(n, k), the chance that at least
    one of k samples drawn without replacement is correct (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_k_curve(correct_by_prompt: Iterable[Iterable[bool]], ks: Iterable[int]) -> dict[int, float]:
    """Mean pass@k over prompts for each k, each prompt with its own samples (k up to the fewest)."""
    groups = [[bool(x) for x in g] for g in correct_by_prompt]
    if not groups:
        raise ValueError("pass@k of no prompts")
    fewest = min(len(g) for g in groups)
    return {k: sum(pass_at_k(len(g), sum(g), k) for g in groups) / len(groups) for k in ks if 1 <= k <= fewest}
