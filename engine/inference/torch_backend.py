"""Continuous batching on a plain transformers model, CPU or CUDA.

The backend owns `max_slots` decoding slots. Every `step()` decodes one token for every
occupied slot in one forward pass; a slot whose sample ends is refilled in the same step
from the waiting queue, so a long sample never holds short ones back (static batching,
as in `model.generate()`, keeps finished rows in the batch until the longest ends).

KV cache design. Each layer's keys and values live in one tensor per layer,
[slots, kv_heads, capacity, head_dim], owned by the backend; slot i's tokens fill
columns 0 … length_i − 1. A decode step hands the model a `SlotCache` whose layers
write the new token's key/value into column length_i of row i, in place, and return the
store cut at the widest row; the 2-D attention mask zeroes each row's columns past its
own length, and explicit position ids give RoPE each row's true position. So:

- no per-step concatenation (transformers' DynamicCache copies the whole cache every
  token) and no re-padding when a slot is refilled: a new sample's prompt KV is copied
  into its row once;
- nothing depends on cache internals beyond the small, stable layer contract
  (`update`, `get_seq_length`), which `SlotCache` implements itself;
- prefill uses an ordinary DynamicCache on a left-padded batch of prompts and keeps
  only the last position's logits; a prompt's KV is prefilled once and copied into the
  rows of each of its `n` samples, whose first tokens are all drawn from the one set of
  prefill logits.

Occupied slots are kept contiguous (rows 0 … A − 1): a freed row takes the last row's
contents, so the store's first A rows are always the batch, without gathering.

Works for decoder-only models with full attention on every layer (Llama, Qwen2,
Mistral, …), the models Rollyard trains.
"""

import inspect
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer

from engine.inference.interface import PartialResponse, Request, Sample
from engine.inference.sampling import sample_rows


class _SlotLayer(DynamicLayer):
    """One layer's view of the slot store for a decode step (see the module docstring)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, columns: torch.Tensor, width: int):
        super().__init__()
        self.store_keys, self.store_values = keys, values
        self.rows = torch.arange(len(columns), device=columns.device)
        self.columns = columns  # where each row's new token goes: its current length
        self.width = width  # widest row after this step's token
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.store_keys[self.rows, :, self.columns] = key_states[:, :, 0]
        self.store_values[self.rows, :, self.columns] = value_states[:, :, 0]
        batch = len(self.rows)
        self.keys = self.store_keys[:batch, :, : self.width]
        self.values = self.store_values[:batch, :, : self.width]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.width - 1  # the tokens "already cached", as transformers counts them


def cache_keyword(model: PreTrainedModel) -> str:
    """The keyword a model's forward takes its KV cache under: transformers 5 renamed
    `past_key_values` to `cache` (the old name still works there, with a warning)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class SlotCache(Cache):
    def __init__(self, layers: list[_SlotLayer]):
        super().__init__(layers=layers)


@dataclass
class BackendStats:
    prefill_forwards: int = 0  # forward passes over prompts
    prefilled_prompts: int = 0  # prompts (or resumed contexts) run through a prefill
    decode_steps: int = 0  # forward passes over running slots
    generated_tokens: int = 0


class _Group:
    """The samples of one request, and its prompt's prefill while some have yet to start."""

    def __init__(self, request: Request):
        self.request = request
        resumed = request.resume_from.token_ids if request.resume_from else []
        self.context_ids = list(request.prompt_ids) + list(resumed)  # what the prefill reads
        self.not_started = request.params.n
        # Worst-case KV tokens of one sample: the prompt and a full response.
        self.reserve = len(request.prompt_ids) + request.params.max_new_tokens
        self.layer_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # [kv_heads, len, head_dim]
        self.last_logits: torch.Tensor | None = None  # [vocab]

    def new_sample(self, sample_index: int) -> Sample:
        resumed = self.request.resume_from or PartialResponse([], [], [])
        return Sample(
            request_id=self.request.request_id,
            sample_index=sample_index,
            prompt_ids=list(self.request.prompt_ids),
            token_ids=list(resumed.token_ids),
            logprobs=list(resumed.logprobs),
            versions=list(resumed.versions),
        )


@dataclass
class _Running:
    group: _Group
    sample: Sample
    length: int  # tokens whose KV is in the slot's row
    next_input: int = -1  # last sampled token, fed to the next decode step


class TorchBackend:
    """A `GenerationBackend` over a transformers causal LM (see the module docstring).

    max_slots: samples decoded together. max_tokens: KV-cache tokens the running samples
    may reserve (prompt + max_new_tokens each, so a sample once started always finishes
    without preemption); None = bounded by slots only. prefill_tokens: padded tokens per
    prefill forward pass (one prompt longer than that still goes alone).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        max_slots: int = 256,
        max_tokens: int | None = None,
        prefill_tokens: int = 16_384,
        generator: torch.Generator | None = None,
        version: int = 0,
    ):
        if max_slots < 1:
            raise ValueError(f"max_slots must be at least 1, got {max_slots}")
        self.model = model
        self.max_slots = max_slots
        self.max_tokens = max_tokens
        self.prefill_tokens = prefill_tokens
        self.generator = generator
        self._version = version
        self.stats = BackendStats()
        self._waiting: deque[tuple[_Group, int]] = deque()  # (group, sample_index) not yet started
        self._running: list[_Running] = []  # slot i holds _running[i]
        self._reserved_tokens = 0
        self._store_keys: list[torch.Tensor] = []  # per layer [rows, kv_heads, capacity, head_dim]
        self._store_values: list[torch.Tensor] = []
        self._cache_keyword = cache_keyword(model)

    # ------------------------------------------------------------------ interface
    @property
    def version(self) -> int:
        return self._version

    def submit(self, request: Request) -> None:
        params = request.params
        if self.max_tokens is not None and len(request.prompt_ids) + params.max_new_tokens > self.max_tokens:
            raise ValueError(
                f"request {request.request_id!r} needs up to {len(request.prompt_ids) + params.max_new_tokens} "
                f"KV tokens (prompt + max_new_tokens), more than the backend's max_tokens={self.max_tokens}"
            )
        if request.resume_from is not None:
            resumed = request.resume_from.token_ids
            if len(resumed) >= params.max_new_tokens:
                raise ValueError(
                    f"request {request.request_id!r} resumes {len(resumed)} tokens, already "
                    f"max_new_tokens={params.max_new_tokens}: nothing is left to generate"
                )
            if resumed and resumed[-1] in params.stop_token_ids:
                raise ValueError(f"request {request.request_id!r} resumes a response that already ended with a stop token")
        if request.request_id in self._in_flight_request_ids():
            raise ValueError(f"request id {request.request_id!r} is already in flight")
        group = _Group(request)
        self._waiting.extend((group, index) for index in range(params.n))

    def abort(self, request_id: str) -> list[Sample]:
        """Unknown or already finished request ids abort nothing (they may have just ended)."""
        aborted = []
        for group, index in [item for item in self._waiting if item[0].request.request_id == request_id]:
            self._waiting.remove((group, index))
            aborted.append(group.new_sample(index))
        slots = [slot for slot, running in enumerate(self._running) if running.group.request.request_id == request_id]
        aborted.extend(self._running[slot].sample for slot in slots)
        self._free(slots)
        for sample in aborted:
            sample.status = "aborted"
        return sorted(aborted, key=lambda sample: sample.sample_index)

    def has_unfinished(self) -> bool:
        return bool(self._waiting or self._running)

    def load_weights(self, weights: Mapping[str, torch.Tensor], version: int) -> None:
        """Colocated with the trainer, the backend decodes with the trainer's own model:
        the weights handed over are then its own tensors, and only the version moves."""
        own = self.model.state_dict()
        if any(own[name].data_ptr() != tensor.data_ptr() for name, tensor in weights.items()):
            self.model.load_state_dict(weights)
        self._version = version

    @torch.no_grad()
    def step(self) -> list[Sample]:
        """Puts the model in eval mode and leaves it there (toggling it every step cost
        a sixth of a small model's step); engine.generation.generate restores the mode."""
        if self.model.training:
            self.model.eval()
        finished = self._decode() if self._running else []
        return finished + self._admit()

    # ------------------------------------------------------------------ decoding
    def _decode(self) -> list[Sample]:
        """One token for every running sample."""
        device = self.model.device
        lengths = torch.tensor([running.length for running in self._running], device=device)
        # Never wider than the store: admission sized it for each sample's prompt + max_new_tokens.
        width = int(lengths.max()) + 1
        layers = [
            _SlotLayer(keys, values, lengths, width) for keys, values in zip(self._store_keys, self._store_values)
        ]
        attention_mask = (torch.arange(width, device=device)[None, :] <= lengths[:, None]).long()
        input_ids = torch.tensor([[running.next_input] for running in self._running], device=device)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=lengths[:, None],
            **{self._cache_keyword: SlotCache(layers)},
            use_cache=True,
        )
        self.stats.decode_steps += 1
        for running in self._running:
            running.length += 1
        return self._take_tokens(list(range(len(self._running))), out.logits[:, -1, :])

    def _admit(self) -> list[Sample]:
        """Start waiting samples in free slots: prefill their prompts (once per request),
        copy the KV into their rows and draw their first tokens. Repeats while samples
        that end at their first token free slots again."""
        finished: list[Sample] = []
        while True:
            starting: list[tuple[_Group, int]] = []
            to_prefill: list[_Group] = []
            reserved = self._reserved_tokens
            while self._waiting and len(self._running) + len(starting) < self.max_slots:
                group, index = self._waiting[0]
                if self.max_tokens is not None and reserved + group.reserve > self.max_tokens:
                    break
                if group.layer_kv is None and group not in to_prefill:
                    widest = max([len(g.context_ids) for g in to_prefill] + [len(group.context_ids)])
                    if to_prefill and widest * (len(to_prefill) + 1) > self.prefill_tokens:
                        break
                    to_prefill.append(group)
                reserved += group.reserve
                starting.append(self._waiting.popleft())
            if not starting:
                return finished
            if to_prefill:
                self._prefill(to_prefill)
            first_slot = len(self._running)
            self._ensure_store(
                first_slot + len(starting), max(group.reserve for group, _ in starting), starting[0][0].layer_kv
            )
            for slot, (group, index) in enumerate(starting, start=first_slot):
                for layer, (keys, values) in enumerate(group.layer_kv):
                    self._store_keys[layer][slot, :, : keys.shape[1]] = keys
                    self._store_values[layer][slot, :, : values.shape[1]] = values
                self._running.append(_Running(group, group.new_sample(index), length=len(group.context_ids)))
                self._reserved_tokens += group.reserve
                group.not_started -= 1
            logits = torch.stack([group.last_logits for group, _ in starting])
            for group, _ in starting:
                if group.not_started == 0:  # every sample has its copy: drop the prefill
                    group.layer_kv = group.last_logits = None
            finished += self._take_tokens(list(range(first_slot, len(self._running))), logits)

    def _prefill(self, groups: list[_Group]) -> None:
        """One forward pass over the groups' contexts, left padded so every row's last
        token sits in the last column; keeps each row's KV (pads cut off) and the logits
        that predict its first new token."""
        device = self.model.device
        width = max(len(group.context_ids) for group in groups)
        input_ids = torch.zeros((len(groups), width), dtype=torch.long)
        attention_mask = torch.zeros((len(groups), width), dtype=torch.long)
        for row, group in enumerate(groups):
            input_ids[row, width - len(group.context_ids) :] = torch.tensor(group.context_ids)
            attention_mask[row, width - len(group.context_ids) :] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        # Real tokens count from 0; pads get position 0 (they are masked anyway).
        position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{self._cache_keyword: cache},
            use_cache=True,
            logits_to_keep=1,
        )
        self.stats.prefill_forwards += 1
        self.stats.prefilled_prompts += len(groups)
        for row, group in enumerate(groups):
            start = width - len(group.context_ids)
            group.layer_kv = [(layer.keys[row, :, start:], layer.values[row, :, start:]) for layer in cache.layers]
            group.last_logits = out.logits[row, -1]

    def _take_tokens(self, slots: list[int], logits: torch.Tensor) -> list[Sample]:
        """Sample one token for each of `slots` (rows of `logits`), append it to its
        sample, and free the slots whose sample ended; returns those samples."""
        running = [self._running[slot] for slot in slots]
        settings = [(r.group.request.params.temperature, r.group.request.params.top_p) for r in running]
        tokens, logprobs = sample_rows(logits, settings, self.generator)
        ended_slots, ended = [], []
        for slot, item, token, logprob in zip(slots, running, tokens.tolist(), logprobs.tolist()):
            params = item.group.request.params
            sample = item.sample
            sample.token_ids.append(token)
            sample.logprobs.append(logprob)
            sample.versions.append(self._version)
            item.next_input = token
            if token in params.stop_token_ids:
                sample.status = "completed"
            elif len(sample.token_ids) >= params.max_new_tokens:
                sample.status = "truncated"
            else:
                continue
            ended_slots.append(slot)
            ended.append(sample)
        self.stats.generated_tokens += len(slots)
        self._free(ended_slots)
        return ended

    # ------------------------------------------------------------------ slots and store
    def _free(self, slots: list[int]) -> None:
        """Empty the slots, moving the last occupied rows into the holes (highest slot
        first, so the row moved in is never one being freed)."""
        for slot in sorted(slots, reverse=True):
            self._reserved_tokens -= self._running[slot].group.reserve
            last = len(self._running) - 1
            if slot != last:
                length = self._running[last].length
                for keys, values in zip(self._store_keys, self._store_values):
                    keys[slot, :, :length] = keys[last, :, :length]
                    values[slot, :, :length] = values[last, :, :length]
                self._running[slot] = self._running[last]
            self._running.pop()

    def _ensure_store(self, rows: int, columns: int, example_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Grow the KV store to hold rows × columns (each dimension at least doubles when
        it grows, rows up to max_slots); `example_kv`, one prefill's per-layer
        [kv_heads, len, head_dim] keys and values, gives the layer count, shape and dtype."""
        if self._store_keys:
            have_rows, have_columns = self._store_keys[0].shape[0], self._store_keys[0].shape[2]
            if rows <= have_rows and columns <= have_columns:
                return
            rows = min(self.max_slots, max(rows, 2 * have_rows)) if rows > have_rows else have_rows
            columns = max(columns, 2 * have_columns) if columns > have_columns else have_columns
        keys_example = example_kv[0][0]
        shape = (rows, keys_example.shape[0], columns, keys_example.shape[-1])
        old = self._store_keys + self._store_values
        self._store_keys = [keys_example.new_zeros(shape) for _ in example_kv]
        self._store_values = [keys_example.new_zeros(shape) for _ in example_kv]
        for new, previous in zip(self._store_keys + self._store_values, old):
            new[: previous.shape[0], :, : previous.shape[2]] = previous

    def _in_flight_request_ids(self) -> set[str]:
        return {group.request.request_id for group, _ in self._waiting} | {
            running.group.request.request_id for running in self._running
        }
