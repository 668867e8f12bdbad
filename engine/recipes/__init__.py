"""Recipes: one per orchestration mode, registered by name in RECIPES (the spec's
`orchestration.mode`) as dotted paths, so the spec stays torch-free. A recipe builds the
run's parts from the spec and calls them in order, one step at a time:

- `sync`: the synchronous step (engine.recipes.sync): plan → collect → log-probs →
  shape → advantages → updates → push weights → observe → telemetry.

- `async`: AReaL (engine.recipes.asynchronous): rollout workers generate continuously
  under a staleness bound, the trainer takes a batch whenever one is ready.

engine.orchestration drives a recipe (in process or in a Ray actor) through `step()`,
`evaluate(step)`, `write_checkpoint` and `load_checkpoint`.
"""

from engine.registry import Registry

RECIPES: Registry = Registry("orchestration mode")
RECIPES.register("sync", "engine.recipes.sync:SyncRecipe")
RECIPES.register("async", "engine.recipes.asynchronous:AsyncRecipe")
