"""DeepSpeed data parallel: `backends.data_parallel: N` (on GPUs, `resources.gpus: N`) trains
on N ranks, each a DeepSpeedTrainingBackend in a child process of its own (gloo on the CPU,
NCCL on GPUs, rank r on the run's r-th visible GPU), behind a coordinator that offers the
training-backend interface (engine.training) to the recipe.

- Every optimiser step cuts the mini-batch into N shards balanced by tokens (`plan`), each
  rank forwards and backwards its own shard in token-budget micro-batches, and DeepSpeed
  averages the gradients (ZeRO 1-3 shard the optimiser, gradients and weights as they do
  on one rank): the step is the one-rank step on the whole mini-batch, up to float
  summation order. ZeRO-2 reduces gradients at every backward and ZeRO-3 gathers weights
  at every forward, so all ranks must run the same number of micro-batches: a rank with
  fewer pads with a filler micro-batch weighted 0.
- The coordinator keeps its own copy of the policy (and the KL reference, as the torch
  backend does): the recipe's log-prob passes, the colocated torch generation backend and
  the weights pushed to generation read it, refreshed from rank 0 after each step when
  next read. Its learning-rate schedule steps in lockstep with the ranks', for actor/lr.
- A checkpoint is written by the ranks: rank 0 the Hugging Face `model/` folder, every
  rank its partitions of DeepSpeed's `deepspeed/` checkpoint beside it; every rank
  resumes from it.

Why all N ranks are child processes, rank 0 included, rather than the run's own process:
the in-process vLLM engine (engine.inference.vllm_backend) initialises torch.distributed in
the run's process as a world of one, which a world of N there would contradict. Messages
are pickled by the standard pickler (tensors as bytes, never shared memory), so nothing
depends on how the processes were started; the ranks end when the coordinator is
collected, when its process exits, or when their pipe closes.
"""

import multiprocessing
import os
import pickle
import re
import socket
import traceback
import warnings
import weakref
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import torch

from engine.rollout.types import Rollout
from engine.spec import RunSpec
from engine.training.batching import micro_batches
from engine.training.torch_backend import TorchTrainingBackend, UpdateStatistics

# How long the coordinator waits between checks that every rank is still alive.
POLL_SECONDS = 5.0
# How long a stopping rank may take before it is terminated.
STOP_SECONDS = 30.0

Part = tuple[list[Rollout], float]  # a micro-batch and its weight in the loss (1, or 0 for a filler)


def deepspeed_backend(spec: RunSpec, needs_reference: bool) -> Any:
    """The registry's `deepspeed` entry: one process for one rank, else the coordinator."""
    if spec.backends.data_parallel > 1:
        return DataParallelDeepSpeed(spec, needs_reference)
    from engine.training.deepspeed_backend import DeepSpeedTrainingBackend

    return DeepSpeedTrainingBackend(spec, needs_reference)


def _length(item: Rollout) -> int:
    return len(item.prompt_ids) + len(item.token_ids)


def plan(mini_batch: Sequence[Rollout], ranks: int, max_tokens: int) -> list[list[Part]]:
    """Each rank's micro-batches for one optimiser step: the rollouts dealt, longest first,
    to the rank with the fewest tokens so far (deterministic), each shard cut into
    token-budget micro-batches (engine.training.batching), and the shorter lists topped up
    with a filler (the shortest rollout, weight 0) so every rank runs as many."""
    shards: list[list[Rollout]] = [[] for _ in range(ranks)]
    tokens = [0] * ranks
    for item in sorted(mini_batch, key=_length, reverse=True):
        rank = tokens.index(min(tokens))
        shards[rank].append(item)
        tokens[rank] += _length(item)
    parts = [[(batch, 1.0) for batch in micro_batches(shard, max_tokens)] for shard in shards]
    count = max(len(rank_parts) for rank_parts in parts)
    filler = [min(mini_batch, key=_length)]
    return [rank_parts + [(filler, 0.0)] * (count - len(rank_parts)) for rank_parts in parts]


# ----------------------------------------------------------------- messages
def _send(connection: Connection, message: Any) -> None:
    connection.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _receive(connection: Connection) -> Any:
    return pickle.loads(connection.recv_bytes())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ----------------------------------------------------------------- a rank
def _weights_on_cpu(backend: Any) -> dict[str, torch.Tensor] | None:
    """Rank 0's weights as CPU copies (every rank takes part: ZeRO-3 gathers them)."""
    weights = backend.weights()
    if backend.engine.global_rank != 0:
        return None
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in weights.items()}


def _checksum(backend: Any) -> float:
    """This rank's weights summed in float64 (ZeRO-3: gathered, every rank taking part)."""
    return float(sum(tensor.detach().double().sum() for tensor in backend.weights().values()))


# What a rank does for each command besides calling the backend's method of that name.
RANK_COMMANDS = {"weights": _weights_on_cpu, "checksum": _checksum}


def _rank_main(rank: int, world: int, port: int, spec: RunSpec, threads: int, connection: Connection) -> None:
    """One rank: a DeepSpeedTrainingBackend serving the coordinator's commands until told to
    stop or its pipe closes. Replies ("ok", result) or ("error", traceback), then ends."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(threads)
    try:
        if torch.cuda.is_available():
            torch.cuda.set_device(rank)  # the spec's "cuda" is the current device
        from engine.training.deepspeed_backend import DeepSpeedTrainingBackend

        # No reference model here: its log-probs come with the rollouts (the coordinator's).
        backend = DeepSpeedTrainingBackend(spec, needs_reference=False)
        _send(connection, ("ok", None))
        while True:
            try:
                command, args = _receive(connection)
            except EOFError:
                return  # the coordinator is gone
            if command == "stop":
                return
            handler = RANK_COMMANDS.get(command)
            result = handler(backend, *args) if handler else getattr(backend, command)(*args)
            _send(connection, ("ok", result))
    except BaseException:
        try:
            _send(connection, ("error", traceback.format_exc()))
        except OSError:
            pass


def _stop(processes: list[Any], connections: list[Connection]) -> None:
    for connection in connections:
        try:
            _send(connection, ("stop", ()))
        except OSError:
            pass
    for process in processes:
        process.join(STOP_SECONDS)
        if process.is_alive():
            process.terminate()
            process.join()
    for connection in connections:
        connection.close()


class RankFailed(RuntimeError):
    """A trainer rank raised or died; the message carries its traceback or exit code."""


# ----------------------------------------------------------------- the coordinator
class DataParallelDeepSpeed(TorchTrainingBackend):
    """The training-backend interface over `backends.data_parallel` DeepSpeed ranks."""

    def __init__(self, spec: RunSpec, needs_reference: bool):
        super().__init__(spec, needs_reference)  # the coordinator's copy and the reference
        self.ranks = spec.backends.data_parallel
        self.zero_stage = spec.backends.zero_stage
        context = multiprocessing.get_context("spawn")
        port = _free_port()
        threads = max(1, spec.resources.cpus // self.ranks)
        self._processes, self._connections = [], []
        for rank in range(self.ranks):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_rank_main,
                args=(rank, self.ranks, port, spec, threads, theirs),
                name=f"rollyard-trainer-rank-{rank}",
            )
            process.start()
            theirs.close()
            self._processes.append(process)
            self._connections.append(ours)
        self._finalizer = weakref.finalize(self, _stop, self._processes, self._connections)
        self._replies()  # every rank initialised (DeepSpeed broadcasts rank 0's weights)
        self._stale = True
        self._refresh()

    def rank_checksums(self) -> list[float]:
        """Each rank's own weights summed in float64: equal when the ranks agree."""
        return self._call_all("checksum")

    def close(self) -> None:
        """Stop the ranks (also done when the coordinator is collected or the process exits)."""
        self._finalizer()

    # ----------------------------------------------------------------- messaging
    def _replies(self) -> list[Any]:
        """Every rank's reply, in rank order; RankFailed (the ranks stopped) when one
        raised or died."""
        replies: dict[int, Any] = {}
        waiting = dict(enumerate(self._connections))
        while waiting:
            ready = wait(list(waiting.values()), timeout=POLL_SECONDS)
            for rank, connection in list(waiting.items()):
                if connection in ready:
                    try:
                        status, result = _receive(connection)
                    except EOFError:
                        status, result = "error", f"exited with code {self._processes[rank].exitcode}"
                    if status == "error":
                        self.close()
                        raise RankFailed(f"trainer rank {rank} failed:\n{result}")
                    replies[rank] = result
                    del waiting[rank]
                elif not self._processes[rank].is_alive():
                    self.close()
                    raise RankFailed(f"trainer rank {rank} died (exit code {self._processes[rank].exitcode})")
        return [replies[rank] for rank in range(self.ranks)]

    def _call(self, command: str, per_rank_args: Sequence[tuple]) -> list[Any]:
        for connection, args in zip(self._connections, per_rank_args, strict=True):
            _send(connection, (command, args))
        return self._replies()

    def _call_all(self, command: str, *args: Any) -> list[Any]:
        return self._call(command, [args] * self.ranks)

    def _refresh(self) -> None:
        """The coordinator's copy takes rank 0's weights, when a step changed them."""
        if self._stale:
            weights = self._call_all("weights")[0]
            self.model.load_state_dict(weights)  # in place: a colocated generator shares the module
            self._stale = False

    # ----------------------------------------------------------------- interface
    @torch.no_grad()
    def logprobs(self, rollouts: Sequence[Rollout], reference: bool = False) -> list[torch.Tensor]:
        self._refresh()
        return super().logprobs(rollouts, reference)

    def optimizer_step(self, mini_batch: Sequence[Rollout], loss, statistics: UpdateStatistics) -> None:
        """One optimiser step on `mini_batch`, sharded over the ranks (module docstring)."""
        num_tokens = sum(len(item.token_ids) - item.trained_from for item in mini_batch)
        with_reference = self.reference is not None
        plans = plan(mini_batch, self.ranks, self.spec.training.micro_batch_tokens)
        replies = self._call(
            "accumulate_and_step", [(parts, loss, len(mini_batch), num_tokens, with_reference) for parts in plans]
        )
        for sums, trained_tokens, _ in replies:
            for name, amount in sums.items():
                statistics.sums[name] = statistics.sums.get(name, 0.0) + amount
            statistics.trained_tokens += trained_tokens
        statistics.sums["grad_norm"] += replies[0][2]  # the global norm, the same on every rank
        statistics.steps += 1
        self.version += 1
        self._stale = True

    def end_batch(self) -> None:
        self._call_all("end_batch")
        with warnings.catch_warnings():
            # The coordinator's optimiser never steps (the ranks' do): torch warns of that.
            warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()`"), UserWarning)
            super().end_batch()  # the coordinator's schedule, for actor/lr

    def weights(self) -> Mapping[str, torch.Tensor]:
        self._refresh()
        return self.model.state_dict()

    def save_model(self, folder: Path) -> None:
        self._call_all("save_model", Path(folder))

    def load_model(self, folder: Path) -> None:
        self._call_all("load_model", Path(folder))
        self._stale = True
        self._refresh()

    def state_dict(self) -> dict[str, Any]:
        """Rank 0's schedule and version (the optimiser lives in DeepSpeed's checkpoint)."""
        return self._call_all("state_dict")[0]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._call_all("load_state_dict", state)
        self.scheduler.load_state_dict(state["scheduler"])
        self.version = state["version"]
        self._apply_spec_hyperparameters()
