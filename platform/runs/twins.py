"""The one-click technique check: a run's GRPO twin.

A run that uses CurES, DARS, BroRL, APRIL or AReaL gets a twin with the same seed, model,
dataset, telemetry, backends and budget (steps, prompts per step, rollouts per prompt or
samples per step, max new tokens) and the technique turned off: curriculum uniform,
rollout strategy plain, orchestration sync, algorithm grpo. It is launched through
runs.launch.create_run like any other run (the same checks, quotas and admission), in
the original's team and pool, named "<name> · GRPO twin" and linked by Run.twin_of; the
compare view of the two shows what the technique changed.
"""

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from pydantic import ValidationError

from engine.spec import RolloutSpec, RunSpec, SpecError
from quotas import selectors as quota_selectors
from runs import launch
from runs.models import Run

TWIN_SUFFIX = " · GRPO twin"
NAME_MAX = 200  # RunSpec.name and Run.name
# BroRL: broad rollouts, many samples per prompt (n at least this), or a fixed number of
# samples per step whatever n (rollout.samples_per_step). Its twin spends the same samples
# per step with the spec's default group size.
BROAD_N = 128
BASELINE_N: int = RolloutSpec.model_fields["n"].default
TECHNIQUE_LABELS = {"cures": "CurES", "dars": "DARS", "brorl": "BroRL", "april": "APRIL", "areal": "AReaL"}
# Rollout settings that are budget or sampling, not technique: the twin keeps them.
ROLLOUT_KEPT = ("prompts_per_step", "n", "temperature", "top_p", "max_new_tokens", "memory_budget_mb")


def techniques_of(spec: RunSpec) -> list[str]:
    """The twin-checkable techniques a resolved spec turns on, in TECHNIQUE_LABELS order."""
    on = {
        "cures": spec.curriculum.strategy == "cures",
        "dars": spec.curriculum.strategy == "dars",
        "brorl": spec.rollout.samples_per_step is not None or spec.rollout.n >= BROAD_N,
        "april": spec.rollout.strategy == "april",
        "areal": spec.orchestration.mode == "async",
    }
    return [name for name in TECHNIQUE_LABELS if on[name]]


def techniques_of_run(run: Run) -> list[str]:
    """techniques_of the run's stored spec; none for a spec that no longer parses."""
    try:
        return techniques_of(RunSpec.model_validate(run.spec))
    except ValidationError:
        return []


def baseline_group_size(samples_per_step: int) -> int | None:
    """The largest group size n ≤ BASELINE_N (and ≥ 2) that splits `samples_per_step` into
    whole groups; None when none does (a prime above BASELINE_N)."""
    return next((n for n in range(min(BASELINE_N, samples_per_step), 1, -1) if samples_per_step % n == 0), None)


def twin_spec(spec_data: dict[str, Any], name: str) -> tuple[dict[str, Any], list[str]]:
    """The GRPO twin's spec of a run's stored spec, and the techniques it turns off.

    Raises SpecError with the field at fault: `spec` for a run that uses none of the
    techniques (or whose twin would be the same run), `rollout.samples_per_step` for a
    BroRL budget no group size up to BASELINE_N divides.
    """
    try:
        spec = RunSpec.model_validate(spec_data)
    except ValidationError as exc:
        raise SpecError([("spec", f"the run's stored spec no longer parses: {exc.errors()[0]['msg']}")]) from None
    techniques = techniques_of(spec)
    if not techniques:
        raise SpecError([("spec", "the run uses none of CurES, DARS, BroRL, APRIL or AReaL, so it has no GRPO twin: "
                                  "it is the baseline itself")])
    data = spec.model_dump(mode="json")
    data["name"] = name[: NAME_MAX - len(TWIN_SUFFIX)] + TWIN_SUFFIX
    data["algorithm"] = {"name": "grpo"}
    data["curriculum"] = {"strategy": "uniform", "prior_alpha": spec.curriculum.prior_alpha,
                          "prior_beta": spec.curriculum.prior_beta}
    rollout = {key: data["rollout"][key] for key in ROLLOUT_KEPT} | {"strategy": "plain"}
    if "brorl" in techniques:
        samples = spec.rollout.prompts_per_step * spec.rollout.n
        n = baseline_group_size(samples)
        if n is None:
            raise SpecError([("rollout.samples_per_step", f"{samples} samples per step split into no whole groups of "
                                                          f"2 to {BASELINE_N}: the GRPO twin cannot keep the budget")])
        rollout = {key: value for key, value in rollout.items() if key != "prompts_per_step"}
        rollout |= {"samples_per_step": samples, "n": n}
    data["rollout"] = rollout
    data["orchestration"] = {"mode": "sync"}
    if "areal" in techniques:  # the sync recipe generates on the trainer's model
        data["resources"] = data["resources"] | {"rollout_workers": 0, "placement": "colocated"}
    if RunSpec.model_validate(data).model_dump(mode="json") == spec.model_dump(mode="json") | {"name": data["name"]}:
        raise SpecError([("spec", f"with {', '.join(TECHNIQUE_LABELS[t] for t in techniques)} off the run is "
                                  "unchanged, so its GRPO twin would be the same run")])
    return data, techniques


def launch_twin(user: AbstractBaseUser, run: Run) -> Run:
    """Launch `run`'s GRPO twin for `user` in its team and pool (create_run's checks:
    the member role, the spec, quotas) and link it to `run`. Raises SpecError (no
    technique, see twin_spec), RunPermissionDenied or quotas' RequestRefused."""
    data, _ = twin_spec(run.spec, run.name)
    with transaction.atomic():
        twin = launch.create_run(user, data, team=run.team, retention=run.retention,
                                 pool=quota_selectors.pool_name_of(run))
        twin.twin_of = run
        twin.save(update_fields=["twin_of"])
    return twin
