"""Tokenizer and model files go through the same from_pretrained path as a user's checkpoint."""

import json
import re

import pytest
import torch
from transformers import AutoTokenizer

from engine.assets import resolve_model_path
from engine.models import TinyModelConfig, build_tiny_model, build_tokenizer, load_policy, resolve_device
from engine.spec import ModelSpec, SpecError, parse_spec
from engine.tasks import BUILTIN_TASKS

TEXT = ". . . 7 +5 = 12 -3 +8\n. . . . 12 -3 = 9 +8\n#### 17"


def test_numbers_operands_and_newlines_are_single_tokens_that_round_trip():
    tokenizer = build_tokenizer()
    ids = tokenizer(TEXT)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "<bos>"
    assert tokens[1:12] == [".", ".", ".", "7", "+5", "=", "12", "-3", "+8", "\n", "."]
    assert tokenizer.decode(ids, skip_special_tokens=True) == TEXT
    assert tokenizer.unk_token_id not in ids


def test_every_word_of_the_task_is_in_the_vocabulary():
    tokenizer = build_tokenizer()
    for problem in BUILTIN_TASKS.get("arith").problems("train", 300, seed=0):
        text = problem.prompt + problem.solution
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_the_saved_tokenizer_reloads_through_autotokenizer(tmp_path):
    tokenizer = build_tokenizer()
    build_tiny_model(tokenizer, TinyModelConfig(layers=1, hidden=32, heads=2, kv_heads=2, intermediate=64)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)

    assert reloaded(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    assert reloaded.decode(reloaded(TEXT)["input_ids"], skip_special_tokens=True) == TEXT


def test_a_model_folder_round_trips_through_load_policy(tmp_path):
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, TinyModelConfig(layers=1, hidden=32, heads=2, kv_heads=2, intermediate=64))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()

    loaded, loaded_tokenizer = load_policy(ModelSpec(path=str(tmp_path), device="cpu"))

    ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)
    assert loaded.training and loaded_tokenizer.padding_side == "left"
    assert loaded_tokenizer.eos_token_id == tokenizer.eos_token_id


def test_bfloat16_is_honoured(tmp_path):
    tokenizer = build_tokenizer()
    build_tiny_model(tokenizer, TinyModelConfig(layers=1, hidden=32, heads=2, kv_heads=2, intermediate=64)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, _ = load_policy(ModelSpec(path=str(tmp_path), dtype="bfloat16", device="cpu"))
    assert next(model.parameters()).dtype == torch.bfloat16


def test_the_built_in_model_is_small_and_records_its_recipe():
    folder = resolve_model_path("builtin:arith-tiny")
    size = sum(path.stat().st_size for path in folder.iterdir())
    assert size < 10 * 2**20
    record = json.loads((folder / "warmstart.json").read_text())
    assert record["recipe"]["label_smoothing"] > 0
    accuracy = record["held_out_accuracy"]["temperature_1"]
    # Pass rates spread with difficulty: easy chains mostly solved, the longest rarely.
    assert 0.25 <= accuracy["all"] <= 0.65
    assert accuracy["k=1"] > 0.6 and accuracy["k=12"] < 0.3


def test_the_built_in_model_loads_offline():
    model, tokenizer = load_policy(ModelSpec())
    assert model.config.model_type == "llama"
    assert tokenizer.convert_ids_to_tokens(tokenizer("12 +3")["input_ids"]) == ["<bos>", "12", "+3"]


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_auto_device_falls_back_to_the_cpu(device):
    expected = "cuda" if torch.cuda.is_available() and device == "auto" else "cpu"
    assert resolve_device(device).type == expected


def test_the_warm_start_recipe_runs_and_saves_a_loadable_model(tmp_path):
    from engine.warmstart import Recipe, train

    recipe = Recipe(steps=3, batch_size=8, eval_size=8, shape=TinyModelConfig(layers=1, hidden=32, heads=2, kv_heads=2, intermediate=64))
    model, tokenizer, report = train(recipe, log=lambda line: None)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    assert set(report["held_out_accuracy"]) == {"temperature_1", "greedy"}
    assert 0 <= report["held_out_accuracy"]["greedy"]["all"] <= 1
    loaded, _ = load_policy(ModelSpec(path=str(tmp_path), device="cpu"))
    assert loaded.config.num_hidden_layers == 1


def tiny_folder(folder):
    tokenizer = build_tokenizer()
    build_tiny_model(tokenizer, TinyModelConfig(layers=1, hidden=32, heads=2, kv_heads=2, intermediate=64)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("removed", "named"),
    [
        ("config.json", "config.json"),
        ("model.safetensors", "weights (model.safetensors"),
        ("tokenizer.json", "a tokenizer (tokenizer.json or tokenizer.model)"),
    ],
)
def test_a_folder_missing_a_part_is_refused_naming_it(tmp_path, removed, named):
    folder = tiny_folder(tmp_path)
    (folder / removed).unlink()

    with pytest.raises(SpecError) as refused:
        parse_spec({"model": {"path": str(folder)}})
    assert named in dict(refused.value.problems)["model.path"]
    with pytest.raises(SpecError) as refused_reference:
        parse_spec({"model": {"reference": str(folder)}})
    assert named in dict(refused_reference.value.problems)["model.reference"]
    # A folder that lost a file after its run was made fails to load, saying which.
    with pytest.raises(FileNotFoundError, match=re.escape(named)):
        load_policy(ModelSpec.model_construct(path=str(folder), dtype="float32", device="cpu"))


def test_float16_is_honoured(tmp_path):
    model, _ = load_policy(ModelSpec(path=str(tiny_folder(tmp_path)), dtype="float16", device="cpu"))
    assert next(model.parameters()).dtype == torch.float16
