"""Policy models and tokenizers: load any local Hugging Face causal LM, build the tiny one.

`load_policy` is the one path every model takes, the built-in `builtin:arith-tiny` and
a user's Qwen or Llama folder alike: AutoModelForCausalLM and the saved tokenizer from a
local folder, never from a hub. `encode_prompts` is the one prompt formatting (chat
template or plain text); the end tokens sampling stops on come from the folder's
generation config (engine.generation.stop_token_ids). `build_tokenizer` and
`build_tiny_model` make the built-in model's parts (used by `engine.warmstart` and the
tests); once saved, nothing about them is special.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as transformers_logging

from engine.assets import BUILTIN_PREFIX, check_model_folder
from engine.spec import ModelSpec

ChatTemplateMode = Literal["auto", "on", "off"]

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
# Every word of the arith task: newline, the blank ".", "=", the answer marker, the
# numbers 0..99 and the signed operands +1..+9 and -1..-9.
ARITH_WORDS = (
    ["\n", ".", "=", "####"]
    + [str(number) for number in range(100)]
    + [f"{sign}{operand}" for sign in "+-" for operand in range(1, 10)]
)


def build_tokenizer(words: list[str] = ARITH_WORDS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: words are separated by spaces, and a newline is a word.

    Encoding splits on spaces (dropped) and newlines (kept as the token "\\n"), maps each
    piece to an id (unknown pieces → <unk>) and prepends <bos>. Decoding joins tokens
    with single spaces, then removes the spaces next to newlines, so
    ``decode(encode(text)) == text`` for any text written with single spaces, e.g.
    ". 7 +5 = 12\\n#### 12". Saved with `save_pretrained`, it reloads offline through
    AutoTokenizer like any other fast tokenizer.
    """
    vocab = {word: index for index, word in enumerate(SPECIAL_TOKENS + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(" ", "removed"), pre_tokenizers.Split("\n", "isolated")]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    # WordPiece's decoder puts a space before every token that lacks its continuation
    # prefix; none of ours carries "<cont>", so tokens come out space-separated.
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.WordPiece(prefix="<cont>", cleanup=False),
            decoders.Fuse(),
            decoders.Replace(" \n", "\n"),
            decoders.Replace("\n ", "\n"),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


@dataclass(frozen=True)
class TinyModelConfig:
    """The shape of the built-in model: a standard Llama decoder, just small.

    Llama rather than Qwen2 for a practical reason: transformers 5's AutoTokenizer
    replaces the tokenizer of any `qwen2` checkpoint by Qwen's own BPE pipeline, which
    would split our word-level numbers into digits; for `llama` it honours the saved one.
    """

    layers: int = 2
    hidden: int = 128
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 512
    max_positions: int = 512


def build_tiny_model(tokenizer: PreTrainedTokenizerBase, shape: TinyModelConfig = TinyModelConfig()) -> LlamaForCausalLM:
    """A randomly initialised LlamaForCausalLM over the tokenizer's vocabulary (float32)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def resolve_device(device: str) -> torch.device:
    """'auto' → cuda when a GPU is visible, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_policy(model_spec: ModelSpec) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the policy named by the spec and its tokenizer: see `load_model`, `load_tokenizer`."""
    return load_model(model_spec.path, model_spec), load_tokenizer(model_spec.path)


def load_model(path: str, model_spec: ModelSpec) -> PreTrainedModel:
    """A causal LM from a local folder ('builtin:<name>' or a path; never a hub), in the
    spec's dtype, on the spec's device, in train mode. The policy and a KL reference
    (`model.reference`) both come through here."""
    folder = _complete_model_folder(path)
    # A tqdm bar per load only clutters worker logs and the CLI's progress lines.
    transformers_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=getattr(torch, model_spec.dtype))
    model.to(resolve_device(model_spec.device))
    model.train()
    return model


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a model folder, exactly as saved.

    A folder with a tokenizer.json loads it as a plain fast tokenizer
    (PreTrainedTokenizerFast), whatever `tokenizer_class` its tokenizer_config.json
    names: transformers 5's AutoTokenizer picks the class from the model type and, for a
    `qwen2` config, rebuilds Qwen's own BPE pipeline instead of the saved one (our word-
    level tokenizer came back splitting numbers into digits). tokenizer.json is the
    complete pipeline, so reading it directly serves a user's Qwen or Llama checkpoint
    and ours alike, chat template and special tokens included. A folder with only a
    SentencePiece tokenizer.model goes through AutoTokenizer.

    Padding is on the left (generation needs it); a tokenizer without a pad token pads
    with EOS, the usual choice for Llama-style checkpoints.
    """
    folder = _complete_model_folder(path)
    if (folder / "tokenizer.json").is_file():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    else:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _complete_model_folder(path: str) -> Path:
    """The folder of a model path, or FileNotFoundError naming what it lacks (the spec
    checked it when the run was made; files can go missing since)."""
    try:
        return check_model_folder(path)
    except ValueError as exc:
        hint = " (run `python -m engine.warmstart` for the built-in one)" if path.startswith(BUILTIN_PREFIX) else ""
        raise FileNotFoundError(f"{exc}{hint}") from None


def uses_chat_template(tokenizer: PreTrainedTokenizerBase, mode: ChatTemplateMode) -> bool:
    """Whether prompts go through the tokenizer's chat template (see ModelSpec.chat_template)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has_template:
        raise ValueError("model.chat_template is 'on' but the model's tokenizer has no chat template")
    return has_template and mode != "off"


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str], mode: ChatTemplateMode) -> list[list[int]]:
    """The one way a task's prompt text becomes the model's input ids, for training and
    evaluation alike. With a chat template, each prompt is one user message followed by
    the assistant's opening (the template writes its own BOS, if any, so no special
    tokens are added on top); without, the plain text with the tokenizer's special tokens."""
    if uses_chat_template(tokenizer, mode):
        return [
            list(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=True
                )["input_ids"]
            )
            for prompt in prompts
        ]
    return tokenizer(prompts, add_special_tokens=True)["input_ids"]


def load_model_weights(model: PreTrainedModel, folder: Path) -> None:
    """Copy the weights saved in a model folder (a checkpoint's `model/`) into `model`,
    which keeps its dtype, device and identity (the optimiser holds its parameters).
    Loading through from_pretrained undoes exactly what save_pretrained did (tied
    weights, shards, renamed keys)."""
    transformers_logging.disable_progress_bar()
    saved = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=model.dtype)
    model.load_state_dict(saved.state_dict())
