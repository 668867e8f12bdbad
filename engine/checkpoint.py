"""Checkpoints: everything a run needs to continue exactly where it stopped.

A run directory keeps its checkpoints under `checkpoints/`, one folder per step:

    <run_dir>/checkpoints/step-000010/
        model/               save_pretrained of the policy and its tokenizer: a checkpoint
                             is itself a model folder any spec can name as `model.path`
        trainer_state.pt     the trainer's `state_dict()`: optimiser, LR scheduler, every
                             random generator, the prompt order, the step counter
        checkpoint.json      {"step": 10, "metrics": {latest held-out metrics}}

A checkpoint is written into a hidden `.partial-…` folder beside the others and renamed
into place when complete, so a save cut short (a lost worker, a full disk) never shows
up as a step folder and is never taken as the latest. `latest_checkpoint` therefore only
has to read the names.

The random states are taken and restored here too (`generator_states`,
`global_rng_state`), so the trainer's `state_dict` stays a list of what it holds.

The folder layout (`latest_checkpoint`, `read_info`) is torch-free, for the driver and
the platform; torch is imported by the functions that handle tensors.
"""

import json
import os
import random
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
STATE_FILE = "trainer_state.pt"
INFO_FILE = "checkpoint.json"
_STEP_FOLDER = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    metrics: dict[str, float]


def checkpoint_folder(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"step-{step:06d}"


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        match = _STEP_FOLDER.match(folder.name)
        if match and folder.is_dir():
            found.append((int(match.group(1)), folder))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = complete_checkpoints(run_dir)
    return checkpoints[-1][1] if checkpoints else None


def read_info(folder: Path) -> CheckpointInfo:
    """The step and metrics of a checkpoint folder, or FileNotFoundError naming what is
    missing when the folder is not a complete checkpoint."""
    folder = Path(folder)
    missing = [name for name in (MODEL_DIR, STATE_FILE, INFO_FILE) if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete checkpoint: it lacks {', '.join(missing)}")
    info = json.loads((folder / INFO_FILE).read_text())
    return CheckpointInfo(step=int(info["step"]), metrics={k: float(v) for k, v in info["metrics"].items()})


def save_checkpoint(trainer: Any, run_dir: Path, step: int, metrics: dict[str, float]) -> Path:
    """Write the trainer's model, tokenizer and state as the checkpoint of `step` and
    return its folder. Saving a step again (a requeued run redoing it) replaces it."""
    import torch

    final = checkpoint_folder(run_dir, step)
    partial = final.parent / f".partial-{final.name}-{uuid.uuid4().hex[:8]}"
    partial.mkdir(parents=True)
    try:
        trainer.model.save_pretrained(partial / MODEL_DIR)
        trainer.tokenizer.save_pretrained(partial / MODEL_DIR)
        torch.save(trainer.state_dict(), partial / STATE_FILE)
        (partial / INFO_FILE).write_text(json.dumps({"step": step, "metrics": metrics}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def load_checkpoint(trainer: Any, folder: Path) -> CheckpointInfo:
    """Restore a trainer built from the run's spec to the checkpoint in `folder`: the
    policy's weights, then its `load_state_dict`. Returns the checkpoint's step and metrics."""
    import torch

    from engine.models import load_model_weights

    info = read_info(folder)
    load_model_weights(trainer.model, Path(folder) / MODEL_DIR)
    state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    trainer.load_state_dict(state)
    return info


# ----------------------------------------------------------------- random states
def generator_states(owner: object) -> dict[str, Any]:
    """The state of every random generator `owner` holds as an attribute (torch
    Generators, random.Random, numpy Generators), by attribute name. Found by type, so a
    generator added to the trainer later is saved without anyone remembering to."""
    import torch

    states: dict[str, Any] = {}
    for name, value in vars(owner).items():
        if isinstance(value, torch.Generator):
            states[name] = value.get_state()
        elif isinstance(value, random.Random):
            states[name] = value.getstate()
        elif isinstance(value, np.random.Generator):
            states[name] = _plain(value.bit_generator.state)
    return states


def restore_generator_states(owner: object, states: dict[str, Any]) -> None:
    import torch

    held = vars(owner)
    expected = set(generator_states(owner))
    if set(states) != expected:
        raise ValueError(f"the checkpoint holds generators {sorted(states)}, the trainer {sorted(expected)}")
    for name, state in states.items():
        value = held[name]
        if isinstance(value, torch.Generator):
            value.set_state(state)
        elif isinstance(value, random.Random):
            value.setstate(_as_tuples(state))
        else:
            value.bit_generator.state = state


def global_rng_state() -> dict[str, Any]:
    """Python's, numpy's and torch's global random states (and CUDA's when in use)."""
    import torch

    numpy_name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (numpy_name, keys.tolist(), int(position), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_global_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(_as_tuples(state["python"]))
    numpy_name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((numpy_name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as plain Python values (torch.load's safe mode refuses numpy)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _as_tuples(value: Any) -> Any:
    """random.Random.setstate wants the nested tuples getstate gave (a save may turn them into lists)."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(item) for item in value)
    return value
