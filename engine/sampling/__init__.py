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

The difficulty store (engine.sampling.difficulty) keeps a Beta posterior per prompt that
every sampler may read; CurES and DARS will be further samplers, BroRL a large n.
"""

from engine.registry import Registry
from engine.sampling.passes import EasyToHardSampler, UniformSampler

SAMPLERS: Registry = Registry("curriculum strategy")
SAMPLERS.register("uniform", UniformSampler)
SAMPLERS.register("easy_to_hard", EasyToHardSampler)
