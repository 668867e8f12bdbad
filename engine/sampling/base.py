"""What every sampler takes and returns (torch-free)."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from engine.problems import Problem


@dataclass(frozen=True)
class PlanItem:
    """One prompt of a step's plan and the rollouts it gets."""

    problem: Problem
    n: int


# Rolls a plan out and verifies it, returning its groups (engine.rollout.types.Group);
# what a sampler's `probe` is handed.
Probe = Callable[[list[PlanItem]], list[Any]]
# Each rollout's gradient norm ‖∇_φ(−log π(y|x))‖₂ over the policy's embedding matrix φ
# (engine.training.torch_backend.TorchTrainingBackend.embedding_grad_norms), for a
# sampler that weighs its probe's rollouts by them (CurES); the weights stay untouched.
GradientNorms = Callable[[list[Any]], list[float]]


class Sampler(Protocol):
    description: ClassVar[str]
    # The spec fields (engine.spec.CurriculumSpec) this sampler reads, with their
    # defaults; a field it does not read must stay unset in a spec.
    parameters: ClassVar[dict[str, Any]]

    def probe(self, step: int, collect: Probe, gradient_norms: GradientNorms) -> None:
        """Before the step's plan: rollouts the sampler needs to see first, collected by
        `collect` and never trained on (CurES's pre-rollouts), with `gradient_norms` to
        measure them by. Most samplers need none."""
        ...

    def next(self, step: int, prompts: int) -> list[PlanItem]:
        """The next `prompts` prompts to roll out at `step`, each with its rollout count.
        Called once per step, and again by a strategy that needs more (DAPO's refill)."""
        ...

    def observe(self, step: int, rollouts: Sequence[Any]) -> None:
        """Every verified rollout of `step` (engine.rollout.types.Rollout)."""
        ...

    def metrics(self, step: int) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
