"""The difficulty store: what the run has learnt about each prompt, from every verified rollout.

Per prompt id: attempts, successes, and a Beta posterior over its pass rate,

    p ~ Beta(α₀ + successes, β₀ + attempts − successes)

from a configurable prior (α₀ = β₀ = 1, the uniform prior CurES uses), with its mean
(α / (α + β)), a central `interval` credible interval (90% by default, from scipy's Beta
quantiles), the last step that rolled it out and the rollouts allocated to it at that
step. Samplers read it (CurES and DARS allocate from it), the run reports it each step
as a `DifficultyUpdates` event holding only the prompts that changed, and the platform
stores it per run and in the catalog's per-prompt records.

Torch-free; its state is plain numbers, saved in every checkpoint.
"""

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scipy.stats import beta as beta_distribution

from engine.events import PromptDifficulty


@dataclass
class PromptRecord:
    attempts: int = 0
    successes: int = 0
    last_step: int = 0  # 0: never rolled out
    allocated: int = 0  # rollouts planned for it at last_step


class DifficultyStore:
    def __init__(self, prior_alpha: float = 1.0, prior_beta: float = 1.0, interval: float = 0.9):
        if prior_alpha <= 0 or prior_beta <= 0:
            raise ValueError(f"a Beta prior needs α₀, β₀ > 0, got {prior_alpha}, {prior_beta}")
        if not 0 < interval < 1:
            raise ValueError(f"the credible interval is a probability in (0, 1), got {interval}")
        self.prior_alpha = prior_alpha
        self.prior_beta = prior_beta
        self.interval = interval
        self._records: dict[str, PromptRecord] = {}
        self._changed: set[str] = set()  # since the last `changes()`

    def __contains__(self, prompt_id: str) -> bool:
        return prompt_id in self._records

    def __len__(self) -> int:
        return len(self._records)

    def record(self, prompt_id: str) -> PromptRecord:
        """The prompt's record (all zeros for a prompt never seen)."""
        return self._records.get(prompt_id, PromptRecord())

    def posterior(self, prompt_id: str) -> tuple[float, float]:
        """(α, β) of the prompt's pass-rate posterior."""
        record = self.record(prompt_id)
        return self.prior_alpha + record.successes, self.prior_beta + record.attempts - record.successes

    def mean(self, prompt_id: str) -> float:
        alpha, beta = self.posterior(prompt_id)
        return alpha / (alpha + beta)

    def credible_interval(self, prompt_id: str) -> tuple[float, float]:
        """The central `interval` credible interval of the pass rate."""
        alpha, beta = self.posterior(prompt_id)
        tail = (1.0 - self.interval) / 2
        low, high = beta_distribution.ppf([tail, 1.0 - tail], alpha, beta)
        return float(low), float(high)

    def allocate(self, step: int, allocations: Iterable[tuple[str, int]]) -> None:
        """Rollouts planned at `step` per prompt id (a prompt planned twice adds up)."""
        for prompt_id, n in allocations:
            record = self._records.setdefault(prompt_id, PromptRecord())
            if record.last_step != step:
                record.last_step, record.allocated = step, 0
            record.allocated += n
            self._changed.add(prompt_id)

    def observe(self, step: int, outcomes: Iterable[tuple[str, bool]]) -> None:
        """Verified outcomes of `step`: (prompt id, correct) for every rollout."""
        for prompt_id, correct in outcomes:
            record = self._records.setdefault(prompt_id, PromptRecord())
            record.attempts += 1
            record.successes += int(correct)
            record.last_step = step
            self._changed.add(prompt_id)

    def changes(self) -> list[PromptDifficulty]:
        """The prompts that changed since the last call, as event rows (then forgets them)."""
        rows = [self.row(prompt_id) for prompt_id in sorted(self._changed)]
        self._changed.clear()
        return rows

    def row(self, prompt_id: str) -> PromptDifficulty:
        record = self.record(prompt_id)
        alpha, beta = self.posterior(prompt_id)
        low, high = self.credible_interval(prompt_id)
        return PromptDifficulty(
            prompt_id=prompt_id,
            attempts=record.attempts,
            successes=record.successes,
            alpha=alpha,
            beta=beta,
            mean=alpha / (alpha + beta),
            low=low,
            high=high,
            last_step=record.last_step,
            allocated=record.allocated,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "records": {prompt_id: asdict(record) for prompt_id, record in self._records.items()},
            "changed": sorted(self._changed),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._records = {prompt_id: PromptRecord(**record) for prompt_id, record in state["records"].items()}
        self._changed = set(state["changed"])


def outcomes_of(rollouts: Sequence[Any]) -> list[tuple[str, bool]]:
    """(prompt id, correct) of each verified rollout (engine.rollout.types.Rollout)."""
    return [(item.problem.id, item.correct) for item in rollouts]
