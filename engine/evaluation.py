"""Held-out scores from several samples per prompt (torch-free).

pass@k is the chance that at least one of k samples is correct. Drawing n ≥ k samples of
a prompt and counting c correct ones, the unbiased estimator (Chen et al. 2021, the
Codex paper) is

    pass@k = 1 − C(n − c, k) / C(n, k)

averaged over prompts. The binomials overflow for large n, so it is computed as the
equal product 1 − Π_{i = n−c+1}^{n} (1 − k / i); when fewer than k samples are wrong
every draw of k contains a correct one and pass@k is exactly 1.
"""

from collections.abc import Iterable

import numpy as np


def pass_at_k(samples: int, correct: int, k: int) -> float:
    """Unbiased pass@k of one prompt with `correct` of `samples` samples right."""
    if not 0 <= correct <= samples or not 1 <= k <= samples:
        raise ValueError(f"pass@k needs 0 ≤ correct ≤ samples and 1 ≤ k ≤ samples, got {correct}, {samples}, {k}")
    if samples - correct < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(samples - correct + 1, samples + 1)))


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """pass@k averaged over prompts given (samples, correct) per prompt."""
    return float(np.mean([pass_at_k(samples, correct, k) for samples, correct in counts]))
