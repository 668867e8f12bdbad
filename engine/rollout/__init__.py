"""Rollouts: their types (engine.rollout.types), the collector that owns the run's one
generation backend (engine.rollout.collector), and the strategies that decide how a
step's groups are collected, registered by name in ROLLOUT_STRATEGIES (the spec's
`rollout.strategy`) as dotted paths, so the spec stays torch-free:

- `plain`: the sampler's plan, collected once.
- `dynamic_sampling`: DAPO's refill: rounds of fresh groups until the batch holds enough
  groups whose rewards differ (the default when the algorithm asks for dynamic sampling).

- `april`: APRIL's active partial rollouts (engine.rollout.april): over-sample, stop at
  the batch, abort the tail and resume it first next step.

- `dars`: DARS's two rounds (engine.rollout.dars): the plan, then extra rollouts for
  the prompts under 50%, merged into their groups; zero-variance groups filtered. The
  `dars` curriculum resolves an unset rollout.strategy to it.

BroRL's large n is not a strategy: with rollout.memory_budget_mb every strategy's
generation and training run in chunks that fit the budget (engine.rollout.chunked).
"""

from engine.registry import Registry

ROLLOUT_STRATEGIES: Registry = Registry("rollout strategy")
ROLLOUT_STRATEGIES.register("plain", "engine.rollout.strategies:PlainCollection")
ROLLOUT_STRATEGIES.register("dynamic_sampling", "engine.rollout.strategies:DynamicSampling")
ROLLOUT_STRATEGIES.register("dars", "engine.rollout.dars:DarsCollection")
ROLLOUT_STRATEGIES.register("april", "engine.rollout.april:ActivePartialRollouts")
