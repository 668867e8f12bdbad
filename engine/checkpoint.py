"""Checkpoints: everything a run needs to continue exactly where it stopped.

A run directory keeps its checkpoints under `checkpoints/`, one folder per step:

    <run_dir>/checkpoints/step-000010/
        model/               save_pretrained of the policy and its tokenizer: a checkpoint
                             is itself a model folder any spec can name as `model.path`
        trainer_state.pt     the recipe's `state_dict()`: the step counter, the global
                             random states, and each stateful part's own state under its
                             name (sampler, strategy, collector, training, difficulty)
        checkpoint.json      {"step": 10, "metrics": {latest held-out metrics}}

A checkpoint is written into a hidden `.partial-…` folder beside the others and renamed
into place when complete (`write_checkpoint`, then `publish_checkpoint`), so a save cut
short (a lost worker, a full disk) never shows up as a step folder and is never taken as
the latest, and `latest_checkpoint` only has to read the names. The driver renames only
while its attempt is current, with its Checkpoint event stored in the same transaction
(the sink's `publish`), so a superseded driver never publishes into a run folder another
worker owns.

A part's state is the part's business (engine.recipes.sync.SyncRecipe.parts): renaming
an attribute never breaks a checkpoint. Checkpoints written before the engine was cut
into parts (one trainer's attributes) are read through `upgrade_trainer_state`.

The folder layout (`latest_checkpoint`, `read_info`) is torch-free, for the driver and
the platform; torch is imported by the functions that handle tensors.
"""

import json
import os
import random
import re
import shutil
import uuid
from collections.abc import Callable
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


def write_checkpoint(
    run_dir: Path, step: int, metrics: dict[str, float], save_model: Callable[[Path], None], state: dict[str, Any]
) -> Path:
    """Write the checkpoint of `step` into a hidden partial folder beside its final place
    and return that folder; `publish_checkpoint` makes it the step's checkpoint.
    `save_model(folder)` writes the model folder, `state` (the recipe's state_dict) goes
    to the state file. Written and published apart because a driver publishes only while
    the platform still counts its attempt as current (engine.orchestration.run)."""
    import torch

    final = checkpoint_folder(run_dir, step)
    partial = final.parent / f".partial-{final.name}-{uuid.uuid4().hex[:8]}"
    partial.mkdir(parents=True)
    try:
        save_model(partial / MODEL_DIR)
        torch.save(state, partial / STATE_FILE)
        (partial / INFO_FILE).write_text(json.dumps({"step": step, "metrics": metrics}, indent=2))
    except BaseException:
        discard_checkpoint(partial)
        raise
    return partial


def publish_checkpoint(partial: Path) -> Path:
    """Rename a written checkpoint into its step's folder and return that. Publishing a
    step again (a requeued run redoing it) replaces the older one."""
    partial = Path(partial)
    final = partial.parent / partial.name.removeprefix(".partial-").rsplit("-", 1)[0]
    if not partial.exists() and final.exists():
        # Renamed by an earlier try whose transaction never committed (the sink retries
        # its publish after a lost database connection): the unique partial name is ours.
        return final
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    return final


def discard_checkpoint(partial: Path) -> None:
    """Remove a written checkpoint that will never be published."""
    shutil.rmtree(partial, ignore_errors=True)


def read_state(folder: Path) -> tuple[CheckpointInfo, Path, dict[str, Any]]:
    """A checkpoint's step and metrics, its model folder and its recipe state."""
    import torch

    info = read_info(folder)
    state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    if "generators" in state:
        state = upgrade_trainer_state(state)
    return info, Path(folder) / MODEL_DIR, state


def upgrade_trainer_state(state: dict[str, Any]) -> dict[str, Any]:
    """A state written by the one-object trainer, as the recipe's parts name theirs."""
    optimizer_steps = [int(entry["step"]) for entry in state["optimizer"]["state"].values() if "step" in entry]
    return {
        "step": state["step"],
        "global_rng": state["global_rng"],
        "sampler": {"order": state["prompt_order"], "order_rng": state["generators"]["_order_rng"]},
        "strategy": {},
        "collector": {"generator": state["generators"]["_sampling_rng"]},
        "training": {
            "optimizer": state["optimizer"],
            "scheduler": state["scheduler"],
            "version": max(optimizer_steps, default=0),
        },
        "difficulty": {"records": {}, "changed": []},
    }


# ----------------------------------------------------------------- random states
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

    random.setstate(as_tuples(state["python"]))
    numpy_name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((numpy_name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def as_tuples(value: Any) -> Any:
    """random.Random.setstate wants the nested tuples getstate gave (a save may turn them into lists)."""
    if isinstance(value, (list, tuple)):
        return tuple(as_tuples(item) for item in value)
    return value
