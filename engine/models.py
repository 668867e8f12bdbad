"""Policy models and tokenizers: load any local Hugging Face causal LM, build the tiny one.

`load_policy` is the one path every model takes, the built-in `builtin:arith-tiny` and
a user's Qwen or Llama folder alike: AutoModelForCausalLM + AutoTokenizer from a local
folder, never from a hub. `build_tokenizer` and `build_tiny_model` make the built-in
model's parts (used by `engine.warmstart` and the tests); once saved, nothing about
them is special.
"""

from dataclasses import dataclass
from pathlib import Path

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

from engine.assets import resolve_model_path
from engine.spec import ModelSpec

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
    """Load a causal LM and its tokenizer from a local folder ('builtin:<name>' or a path).

    The model comes back in train mode on the spec's device and dtype. The tokenizer is
    set to pad on the left (generation needs it) and gets a pad token if it has none
    (EOS doubles as pad, the usual choice for Llama-style checkpoints).
    """
    folder = Path(resolve_model_path(model_spec.path))
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no model at {folder} (run `python -m engine.warmstart` for the built-in one)")
    # A tqdm bar per load only clutters worker logs and the CLI's progress lines.
    transformers_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, dtype=getattr(torch, model_spec.dtype)
    )
    model.to(resolve_device(model_spec.device))
    model.train()
    return model, tokenizer

