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

from engine.inference.interface import GenerationBackend, Request, SamplingParams
from engine.models import ChatTemplateMode, encode_prompts
from engine.rollout.types import Group, Rollout
from engine.sampling.base import PlanItem
from engine.tasks import Task
from engine.telemetry import Timeline

ROLLOUT_WORKER = "rollout-0"


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
                group.rollouts.append(
                    Rollout(
                        group=group.id,
                        problem=group.problem,
                        prompt_ids=sample.prompt_ids,
                        token_ids=sample.token_ids,
                        logprobs=sample.logprobs,
                        versions=sample.versions,
                        status=sample.status,
                        text=text,
                        reward=self.task.score(group.problem, text),
                    )
                )
        return groups

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
