"""Rollouts: their types (engine.rollout.types), the collector that owns the run's one
generation backend (engine.rollout.collector), and the strategies that decide how a
step's groups are collected, registered by name in ROLLOUT_STRATEGIES (the spec's
`rollout.strategy`) as dotted paths, so the spec stays torch-free:

- `plain`: the sampler's plan, collected once.
- `dynamic_sampling`: DAPO's refill: rounds of fresh groups until the batch holds enough
  groups whose rewards differ (the default when the algorithm asks for dynamic sampling).

APRIL (abort the tail, resume next step) and BroRL's memory-chunked collection will be
further strategies.
"""

from engine.registry import Registry

ROLLOUT_STRATEGIES: Registry = Registry("rollout strategy")
ROLLOUT_STRATEGIES.register("plain", "engine.rollout.strategies:PlainCollection")
ROLLOUT_STRATEGIES.register("dynamic_sampling", "engine.rollout.strategies:DynamicSampling")
