"""Samplers: which prompts a step trains on, and how many rollouts each gets.

A sampler is a class registered by name in SAMPLERS (the spec's `curriculum.strategy`);
it declares the spec fields it reads with their defaults (`parameters`) and a
`description`, and implements the `Sampler` protocol of engine.sampling.base:

    plan = sampler.next(step, prompts)   # [PlanItem(problem, n), ...]
    sampler.observe(step, rollouts)      # every verified rollout of the step
    sampler.state_dict() / load_state_dict(state)

Torch-free: the spec and the platform list and validate the strategies from here.

- `uniform`: every prompt, in seeded passes over the pool (engine.sampling.passes).
- `easy_to_hard`: the same passes, admitting at step s only prompts at or below the
  q(s)-quantile of the pool's difficulties (difficulty pacing).
- `cures`: CurES (engine.sampling.cures): pre-rollouts of each chunk of the pool give
  every prompt a Beta posterior; prompts drawn with posterior weights, rollouts shared
  in proportion to each prompt's gradient spread, zero-spread prompts pruned.
- `dars`: DARS (engine.sampling.dars): the passes with n rollouts each, plus a second
  round for prompts under 50%, collected by the `dars` rollout strategy.

The difficulty store (engine.sampling.difficulty) keeps a Beta posterior per prompt that
every sampler may read. BroRL is a large n (engine.rollout.chunked), not a sampler.
"""

from engine.registry import Registry
from engine.sampling.cures import CuresSampler
from engine.sampling.dars import DarsSampler
from engine.sampling.passes import EasyToHardSampler, UniformSampler

SAMPLERS: Registry = Registry("curriculum strategy")
SAMPLERS.register("uniform", UniformSampler)
SAMPLERS.register("easy_to_hard", EasyToHardSampler)
SAMPLERS.register("cures", CuresSampler)
SAMPLERS.register("dars", DarsSampler)
