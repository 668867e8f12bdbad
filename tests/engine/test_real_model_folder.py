"""A model folder like a user's Qwen or Llama checkpoint — built here with `transformers`
from a config with random weights, and a byte-level BPE tokenizer trained with
`tokenizers`, chat template and several end tokens included — loads, generates and
trains through the same path as any other model: `load_policy` and `engine.orchestration.run`."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from engine.checkpoint import MODEL_DIR, checkpoint_folder
from engine.events import ListSink
from engine.generation import SamplingParams, generate, stop_token_ids
from engine.models import encode_prompts, load_policy
from engine.orchestration import run
from engine.spec import ModelSpec, parse_spec
from engine.tasks import BUILTIN_TASKS

QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
FAMILIES = {
    # Qwen style: no BOS, the tokenizer's EOS is <|endoftext|>, a chat turn ends with <|im_end|>.
    "qwen2": {
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": None,
        "eos": "<|endoftext|>",
        "ends": ["<|im_end|>", "<|endoftext|>"],
        "template": QWEN_TEMPLATE,
    },
    # Llama 3 style: BOS on plain text (and written by the template), turns end with <|eot_id|>.
    "llama": {
        "special": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "bos": "<|begin_of_text|>",
        "eos": "<|end_of_text|>",
        "ends": ["<|end_of_text|>", "<|eot_id|>"],
        "template": LLAMA_TEMPLATE,
    },
}


def train_tokenizer(family: dict) -> PreTrainedTokenizerFast:
    """A byte-level BPE (the scheme of Qwen's and Llama 3's tokenizers) learnt on arith text."""
    problems = BUILTIN_TASKS.get("arith").problems("train", 200, seed=0)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=family["special"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([p.prompt + p.solution for p in problems], trainer)
    if family["bos"]:
        bos_id = tokenizer.token_to_id(family["bos"])
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{family['bos']} $A", pair=f"{family['bos']} $A $B", special_tokens=[(family["bos"], bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=family["bos"],
        eos_token=family["eos"],
        chat_template=family["template"],
    )


def build_folder(folder, model_type: str):
    family = FAMILIES[model_type]
    tokenizer = train_tokenizer(family)
    ends = tokenizer.convert_tokens_to_ids(family["ends"])
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=ends,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    if model_type == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape, tie_word_embeddings=True))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=False))
    model.generation_config = GenerationConfig(eos_token_id=ends, bos_token_id=tokenizer.bos_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


@pytest.fixture(params=["qwen2", "llama"])
def model_folder(request, tmp_path):
    model, tokenizer = build_folder(tmp_path / request.param, request.param)
    return tmp_path / request.param, request.param, model, tokenizer


def test_the_folder_loads_with_its_own_tokenizer_chat_template_and_end_tokens(model_folder):
    folder, model_type, built_model, built_tokenizer = model_folder
    text = ". . . 7 +5 = 12 -3 +8\n#### 17"

    model, tokenizer = load_policy(ModelSpec(path=str(folder), device="cpu"))

    assert model.config.model_type == model_type
    # The saved tokenizer, not one transformers picks for the model type (for qwen2,
    # AutoTokenizer would rebuild Qwen's own pipeline; see engine.models.load_tokenizer).
    assert tokenizer(text)["input_ids"] == built_tokenizer(text)["input_ids"]
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    assert tokenizer.chat_template == FAMILIES[model_type]["template"]
    assert stop_token_ids(model, tokenizer) == tuple(
        dict.fromkeys(tokenizer.convert_tokens_to_ids([FAMILIES[model_type]["eos"], *FAMILIES[model_type]["ends"]]))
    )
    ids = built_tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, built_model.eval()(input_ids=ids).logits)


def test_prompts_go_through_the_chat_template_once(model_folder):
    folder, model_type, _, _ = model_folder
    _, tokenizer = load_policy(ModelSpec(path=str(folder), device="cpu"))
    prompt = BUILTIN_TASKS.get("arith").problems("test", 1, seed=0)[0].prompt

    (templated,) = encode_prompts(tokenizer, [prompt], "auto")
    (plain,) = encode_prompts(tokenizer, [prompt], "off")

    rendered = tokenizer.decode(templated)
    assert prompt in rendered and rendered != prompt
    assert rendered.endswith("<|im_start|>assistant\n" if model_type == "qwen2" else "assistant<|end_header_id|>\n\n")
    if tokenizer.bos_token_id is not None:  # the template writes BOS; nothing adds a second
        assert templated.count(tokenizer.bos_token_id) == 1 and templated[0] == tokenizer.bos_token_id
    assert tokenizer.decode(plain, skip_special_tokens=True) == prompt


def test_chat_template_on_without_a_template_is_an_error():
    _, tokenizer = load_policy(ModelSpec(device="cpu"))  # the built-in word-level tokenizer has none
    assert encode_prompts(tokenizer, ["7 +5\n"], "auto") == encode_prompts(tokenizer, ["7 +5\n"], "off")
    with pytest.raises(ValueError, match="no chat template"):
        encode_prompts(tokenizer, ["7 +5\n"], "on")


def test_the_folder_generates_and_stops_only_on_its_end_tokens(model_folder):
    folder, _, _, _ = model_folder
    model, tokenizer = load_policy(ModelSpec(path=str(folder), device="cpu"))
    prompts = encode_prompts(tokenizer, ["7 +5\n", "3 -1 +4\n"], "auto")

    completions = generate(model, tokenizer, prompts, SamplingParams(n=3, max_new_tokens=12), torch.Generator().manual_seed(0))

    ends = set(stop_token_ids(model, tokenizer))
    assert len(completions) == 6
    for completion in completions:
        assert completion.prompt_ids == prompts[completion.prompt_index]
        assert 1 <= len(completion.token_ids) <= 12 and len(completion.logprobs) == len(completion.token_ids)
        assert not ends & set(completion.token_ids[:-1])
        assert (completion.status == "completed") == (completion.token_ids[-1] in ends)


def test_the_folder_trains_a_step_through_the_run_loop_and_checkpoints_a_loadable_folder(model_folder, tmp_path):
    folder, _, built_model, built_tokenizer = model_folder
    spec = parse_spec(
        {
            "model": {"path": str(folder), "device": "cpu"},
            # Random weights solve nothing, so every advantage is 0: the entropy bonus is
            # what gives this step a gradient through the whole update path.
            "algorithm": {"entropy_coef": 0.01},
            "dataset": {"eval_size": 4},
            "rollout": {"prompts_per_step": 2, "n": 2, "max_new_tokens": 12},
            "training": {"steps": 1, "warmup_steps": 0, "lr": 1e-3},
            "resources": {"executor": "inprocess", "cpus": 1},
        }
    )
    sink = ListSink()

    assert run(spec, sink, run_dir=tmp_path / "run") == "succeeded"

    (step_metrics,) = [m for m in sink.of_kind("metrics") if "actor/grad_norm" in m.values]
    assert step_metrics.values["actor/grad_norm"] > 0
    trained, tokenizer = load_policy(ModelSpec(path=str(checkpoint_folder(tmp_path / "run", 1) / MODEL_DIR), device="cpu"))
    before = dict(built_model.named_parameters())
    assert any(not torch.equal(parameter, before[name]) for name, parameter in trained.named_parameters())
    text = "7 +5 = 12\n#### 12"
    assert tokenizer(text)["input_ids"] == built_tokenizer(text)["input_ids"]
    assert tokenizer.chat_template == built_tokenizer.chat_template
