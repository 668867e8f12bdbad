"""Rollyard's RL engine: run spec, models, rollouts, losses, trainers and telemetry.

Importing `engine`, `engine.spec` or `engine.events` never imports torch or Django, so the
web tier can validate specs and read events cheaply. Heavy modules are imported where used.
"""
