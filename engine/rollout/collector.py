"""The collector: one long-lived generation backend for the whole run, and the way a plan of
prompts becomes verified rollouts.

    groups = collector.collect(plan, first_group=0, timeline=timeline)
        encode   the prompts, formatted by the one function training and evaluation
                 share (engine.models.encode_prompts: the chat template per spec)
        submit   one request per prompt; its n samples share one prefill
        step     the backend until every sample has ended
        decode   the response tokens to text
        verify   the task's checker scores each response
    collector.load_weights(weights, version)   # after each update: tokens carry `version`

Finer primitives, for strategies and workers that stop and resume (APRIL, AReaL):

    collector.start(partial_groups)     submit every unfinished sample of each group
    collector.advance(timeline)         one backend step; the groups now complete (verified)
    collector.abort_all()               stop everything in flight: the groups, with their
                                        finished siblings and each unfinished sample's tokens

Because the backend lives as long as the run, what it offers (abort, resume from token
ids, in-place weight updates, per-token versions) reaches the strategies and recipes.
Training and evaluation collect through the same collector; evaluation passes its own
random generator, so evaluating never moves the training stream.
"""

from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from engine.inference.interface import GenerationBackend, PartialResponse, Request, Sample, SamplingParams
from engine.models import ChatTemplateMode, encode_prompts
from engine.problems import Problem
from engine.rollout.types import Group, PartialGroup, Rollout
from engine.sampling.base import PlanItem
from engine.tasks import Task
from engine.telemetry import Timeline

ROLLOUT_WORKER = "rollout-0"


def build_collector(spec: Any, model: Any, tokenizer: PreTrainedTokenizerBase, task: Task, worker: str = ROLLOUT_WORKER, seed_offset: int = 0) -> "Collector":
    """The run's collector over `model` (engine.spec.RunSpec `spec`): its generation
    backend, sampling settings with the model's stop tokens, and the sampling stream
    seeded with spec.seed + seed_offset on the model's device (torch.multinomial on CUDA
    needs a CUDA generator)."""
    from engine.generation import stop_token_ids
    from engine.inference import GENERATION_BACKENDS
    from engine.rollout.chunked import memory_plan

    rollout = spec.rollout
    params = SamplingParams(
        n=rollout.n,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        max_new_tokens=rollout.max_new_tokens,
        stop_token_ids=stop_token_ids(model, tokenizer),
    )
    generator = torch.Generator(device=model.device).manual_seed(spec.seed + seed_offset)
    # BroRL's large n: a memory budget bounds the samples decoding at once (engine.rollout.chunked).
    memory = memory_plan(spec.model, rollout)
    limits = memory.backend_limits() if memory is not None else {}
    backend = GENERATION_BACKENDS.load(spec.backends.generation)(model, **limits, **spec.backends.generation_options())
    return Collector(backend, tokenizer, task, spec.model.chat_template, params, generator, worker)


class Collector:
    def __init__(
        self,
        backend: GenerationBackend,
        tokenizer: PreTrainedTokenizerBase,
        task: Task,
        chat_template: ChatTemplateMode,
        params: SamplingParams,
        generator: torch.Generator,
        worker: str = ROLLOUT_WORKER,
    ):
        """`params` are the run's sampling settings with its stop tokens filled in; a plan
        item's n overrides their n. `generator` is the run's sampling stream."""
        self.backend = backend
        self.tokenizer = tokenizer
        self.task = task
        self.chat_template = chat_template
        self.params = params
        self.generator = generator
        self.worker = worker
        backend.generator = generator
        self._live: dict[int, PartialGroup] = {}  # started groups not complete yet, by key
        self._requests: dict[int, list[str]] = {}  # their request ids in the backend
        self._ready: list[PartialGroup] = []  # complete at start (nothing left to generate)

    @property
    def version(self) -> int:
        return self.backend.version

    def load_weights(self, weights: Mapping[str, torch.Tensor], version: int) -> None:
        self.backend.load_weights(weights, version)

    def collect(
        self,
        plan: Sequence[PlanItem],
        first_group: int,
        timeline: Timeline,
        generator: torch.Generator | None = None,
    ) -> list[Group]:
        """Roll out every plan item and verify the responses: one Group per item, with ids
        first_group, first_group + 1, …, its rollouts in sample order. `generator`
        replaces the run's sampling stream for this call (evaluation's own)."""
        if not plan:
            return []
        prompt_ids = encode_prompts(self.tokenizer, [item.problem.prompt for item in plan], self.chat_template)
        with timeline.phase(self.worker, "generate", "gen"), self._sampling_with(generator):
            for index, (item, ids) in enumerate(zip(plan, prompt_ids, strict=True)):
                self.backend.submit(Request(str(index), ids, _with_n(self.params, item.n)))
            samples = []
            while self.backend.has_unfinished():
                samples.extend(self.backend.step())
            samples.sort(key=lambda sample: (int(sample.request_id), sample.sample_index))
            texts = self.tokenizer.batch_decode([sample.token_ids for sample in samples], skip_special_tokens=True)
        groups = [Group(id=first_group + index, problem=item.problem, rollouts=[]) for index, item in enumerate(plan)]
        with timeline.phase(self.worker, "verify", "reward"):
            for sample, text in zip(samples, texts, strict=True):
                group = groups[int(sample.request_id)]
                group.rollouts.append(self._verified(group.id, group.problem, sample, text))
        return groups

    def _verified(self, group: int, problem: Problem, sample: Sample, text: str, aborts: int = 0) -> Rollout:
        return Rollout(
            group=group,
            problem=problem,
            prompt_ids=sample.prompt_ids,
            token_ids=sample.token_ids,
            logprobs=sample.logprobs,
            versions=sample.versions,
            status=sample.status,
            text=text,
            reward=self.task.score(problem, text),
            aborts=aborts,
        )

    # ----------------------------------------------------------------- start / advance / abort
    def start(self, groups: Sequence[PartialGroup]) -> None:
        """Submit every unfinished sample of each group. A group with nothing generated
        yet goes as one request of n samples (one shared prefill); a resumed one sample
        by sample, each continuing from its tokens (prompt + prefix prefilled again with
        the weights loaded now, as AReaL's servers recompute the KV after an update). A
        group with nothing left to generate is complete at the next `advance`."""
        waiting = [group for group in groups if not group.complete]
        self._ready.extend(group for group in groups if group.complete)
        if not waiting:
            return
        prompt_ids = encode_prompts(self.tokenizer, [group.problem.prompt for group in waiting], self.chat_template)
        for group, ids in zip(waiting, prompt_ids, strict=True):
            if group.key in self._live:
                raise ValueError(f"group {group.key} is already in flight")
            self._live[group.key] = group
            if group.untouched:
                requests = [Request(str(group.key), ids, _with_n(self.params, group.n))]
            else:
                one = _with_n(self.params, 1)
                requests = [
                    Request(f"{group.key}/{index}", ids, one, resume_from=_resumable(group.partial.get(index)))
                    for index in range(group.n)
                    if index not in group.done
                ]
            for request in requests:
                self.backend.submit(request)
            self._requests[group.key] = [request.request_id for request in requests]

    def advance(self, timeline: Timeline) -> list[PartialGroup]:
        """One backend step (every running sample one token further); the samples that
        ended are decoded and verified; returns the groups now complete, by key."""
        complete, self._ready = self._ready, []
        if self._live:
            with timeline.phase(self.worker, "generate", "gen"):
                ended = self.backend.step()
            if ended:
                with timeline.phase(self.worker, "verify", "reward"):
                    texts = self.tokenizer.batch_decode([sample.token_ids for sample in ended], skip_special_tokens=True)
                    for sample, text in zip(ended, texts, strict=True):
                        key, index = _sample_key(sample)
                        group = self._live[key]
                        group.partial.pop(index, None)
                        group.done[index] = self._verified(key, group.problem, sample, text, group.aborts.get(index, 0))
                        if group.complete:
                            complete.append(self._live.pop(key))
                            del self._requests[key]
        return sorted(complete, key=lambda group: group.key)

    def abort_all(self) -> list[PartialGroup]:
        """Stop every sample in flight; returns the groups they belong to (by key), each
        with its finished samples and every unfinished one's tokens, log-probs and
        versions so far (empty for one that had not started)."""
        aborted = []
        for key in sorted(self._live):
            group = self._live[key]
            for request_id in self._requests[key]:
                for sample in self.backend.abort(request_id):
                    _, index = _sample_key(sample)
                    group.partial[index] = PartialResponse(sample.token_ids, sample.logprobs, sample.versions)
                    if sample.token_ids:
                        group.aborts[index] = group.aborts.get(index, 0) + 1
            aborted.append(group)
        self._live, self._requests = {}, {}
        return aborted

    def in_flight(self) -> int:
        """Groups started and not yet complete."""
        return len(self._live) + len(self._ready)

    @contextmanager
    def _sampling_with(self, generator: torch.Generator | None):
        backend = self.backend
        backend.generator = generator or self.generator
        try:
            yield
        finally:
            backend.generator = self.generator

    def state_dict(self) -> dict[str, Any]:
        """The sampling stream. The backend holds nothing between steps (every sample has
        ended); its weights and version come back when the recipe pushes the restored
        training backend's."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def _with_n(params: SamplingParams, n: int) -> SamplingParams:
    return params if params.n == n else replace(params, n=n)


def _resumable(partial: PartialResponse | None) -> PartialResponse | None:
    """A partial to resume from, or None for a sample that never started."""
    return partial if partial is not None and partial.token_ids else None


def _sample_key(sample: Sample) -> tuple[int, int]:
    """(group key, sample index) of a sample `start` submitted: request "key" carries a
    whole group (sample_index is the index), "key/index" one resumed sample."""
    key, _, index = sample.request_id.partition("/")
    return int(key), int(index) if index else sample.sample_index
