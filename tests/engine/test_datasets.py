"""Dataset files: every format, every malformed row reported by line and reason, hostile
files, prompt templates, the dataset spec, FileTask's splits, and a run that trains on
a file through the orchestrator."""

import json
import math
import tracemalloc

import pytest

from engine.data import (
    MAX_LINE_BYTES,
    ColumnMapping,
    DatasetError,
    RowError,
    apply_template,
    check_template,
    load_dataset_rows,
    prompt_id,
)
from engine.data.sample import SAMPLE_PATH, sample_text
from engine.spec import SpecError, parse_spec
from engine.tasks import BUILTIN_TASKS, resolve_task
from engine.tasks.file import FileTask


def write_jsonl(path, rows) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def numbered(count: int, **extra) -> list[dict]:
    return [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i), **extra} for i in range(count)]


# ----------------------------------------------------------------- JSONL
def test_a_jsonl_file_reads_into_problems_with_the_mapped_columns(tmp_path):
    path = write_jsonl(
        tmp_path / "gsm.jsonl",
        [
            {"question": "Q1", "solution": "2 + 2 = 4\n#### 4", "uid": "a", "level": 3, "extra": [1]},
            {"question": "Q2", "solution": "so 1000 + 234\n#### 1,234", "uid": "b", "level": "0.5"},
        ],
    )
    report = load_dataset_rows(
        path,
        columns=ColumnMapping(prompt="question", answer="solution", id="uid", difficulty="level"),
        answer_format="gsm8k",
    )
    assert report.format == "jsonl"
    assert report.errors == [] and report.rejected_rows == 0
    assert report.columns == ["question", "solution", "uid", "level", "extra"]
    first, second = report.problems
    assert (first.id, first.prompt, first.answer, first.difficulty) == ("a", "Q1", "4", 3.0)
    assert first.solution == "2 + 2 = 4\n#### 4"  # the worked answer is kept for a warm start
    assert (second.answer, second.difficulty) == ("1234", 0.5)  # thousands comma removed


def test_without_id_or_difficulty_columns_ids_hash_the_prompt_and_difficulty_is_unknown(tmp_path):
    report = load_dataset_rows(write_jsonl(tmp_path / "d.jsonl", numbered(2)))
    assert [p.id for p in report.problems] == [prompt_id("What is 0 + 0?"), prompt_id("What is 1 + 1?")]
    assert prompt_id("What is 0 + 0?") == prompt_id("What is 0 + 0?") != prompt_id("What is 0 + 0? ")
    assert all(math.isnan(p.difficulty) for p in report.problems)
    assert all(p.split is None for p in report.problems)


def test_every_malformed_jsonl_row_is_reported_with_its_line_and_reason(tmp_path):
    lines = [
        {"prompt": "good", "answer": "1", "id": "x", "difficulty": 1, "split": "train"},  # 1
        "{not json",  # 2
        "[1, 2]",  # 3
        "",  # 4: blank lines are skipped silently
        {"answer": "1", "id": "y", "difficulty": 1, "split": "train"},  # 5
        {"prompt": "  ", "answer": "1", "id": "y", "difficulty": 1, "split": "train"},  # 6
        {"prompt": "p", "id": "y", "difficulty": 1, "split": "train"},  # 7
        {"prompt": "p", "answer": None, "id": "y", "difficulty": 1, "split": "train"},  # 8
        {"prompt": "p", "answer": "1", "id": "y", "difficulty": "hard", "split": "train"},  # 9
        {"prompt": "p", "answer": "1", "id": "y", "difficulty": 1, "split": "holdout-2"},  # 10
        {"prompt": "p", "answer": "1", "id": "x", "difficulty": 1, "split": "train"},  # 11
        {"prompt": "p", "answer": "1", "id": "z", "difficulty": "inf", "split": "train"},  # 12
        {"prompt": ["p"], "answer": "1", "id": "z", "difficulty": 1, "split": "train"},  # 13
        {"prompt": "good too", "answer": 7, "id": 8, "difficulty": 2, "split": "Validation"},  # 14
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    report = load_dataset_rows(path, columns=ColumnMapping(id="id", difficulty="difficulty", split="split"))

    assert [(p.id, p.answer, p.split) for p in report.problems] == [("x", "1", "train"), ("8", "7", "test")]
    assert [(e.line, e.reason) for e in report.errors] == [
        (2, "invalid JSON: Expecting property name enclosed in double quotes at column 2"),
        (3, "expected a JSON object, got an array"),
        (5, "no prompt (no column 'prompt')"),
        (6, "empty prompt (column 'prompt')"),
        (7, "no answer (no column 'answer')"),
        (8, "empty answer (column 'answer')"),
        (9, "difficulty 'hard' is not a number"),
        (10, "unknown split 'holdout-2': use train or test (validation, val, eval, dev ... mean test)"),
        (11, "duplicate id 'x' (first on line 1)"),
        (12, "difficulty must be a finite number, not 'inf'"),
        (13, "prompt is not text (column 'prompt' holds list)"),
    ]
    assert report.rejected_rows == 11 and report.rows_read == 13
    assert str(report.errors[0]).startswith("line 2: invalid JSON")


def test_a_repeated_prompt_without_an_id_column_is_a_duplicate(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "same", "answer": "1"}, {"prompt": "same", "answer": "2"}])
    report = load_dataset_rows(path)
    assert [e.reason for e in report.errors] == ["duplicate prompt (first on line 1)"]


@pytest.mark.parametrize(
    "answer_format, answer, expected",
    [
        ("plain", "  42 ", "42"),
        ("gsm8k", "steps\n#### 42", "42"),
        ("gsm8k", "#### 7\nmore\n#### 1,000,000", "1000000"),  # the last marker
        ("boxed", r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        ("boxed", r"\boxed{1} or rather \boxed{2}", "2"),
    ],
)
def test_answer_formats(tmp_path, answer_format, answer, expected):
    path = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "answer": answer}])
    assert load_dataset_rows(path, answer_format=answer_format).problems[0].answer == expected


@pytest.mark.parametrize(
    "answer_format, answer, reason",
    [
        ("gsm8k", "42", "no '#### <answer>' in the answer"),
        ("gsm8k", "steps ####  ", "no '#### <answer>' in the answer"),
        ("boxed", "42", "no \\boxed{...} in the answer"),
        ("boxed", r"\boxed{}", "no \\boxed{...} in the answer"),
        ("boxed", r"\boxed{\frac{1}{2}", "no \\boxed{...} in the answer"),  # never closed
    ],
)
def test_an_answer_without_its_marker_is_rejected(tmp_path, answer_format, answer, reason):
    rows = [{"prompt": "q", "answer": answer}, {"prompt": "ok", "answer": "#### \\boxed{1}"}]
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    report = load_dataset_rows(path, answer_format=answer_format)
    assert [(e.line, e.reason) for e in report.errors] == [(1, reason)]


def test_max_rows_bounds_the_rows_read(tmp_path):
    report = load_dataset_rows(write_jsonl(tmp_path / "d.jsonl", numbered(50)), max_rows=10)
    assert len(report.problems) == 10 and report.rows_read == 10


# ----------------------------------------------------------------- hostile files
def test_a_line_in_another_encoding_is_reported_and_the_rest_still_loads(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"prompt": "caf\xc3\xa9?", "answer": "1"}\n'  # UTF-8 with a byte-order mark
        + '{"prompt": "café!", "answer": "2"}\n'.encode("latin-1")
        + b'{"prompt": "ok", "answer": "3"}\n'
    )
    report = load_dataset_rows(path)
    assert [p.prompt for p in report.problems] == ["café?", "ok"]
    assert [(e.line, e.reason) for e in report.errors] == [(2, "not UTF-8 text (byte 0xe9 at column 16)")]


def test_a_huge_line_is_skipped_without_reading_it_into_memory(tmp_path):
    path = tmp_path / "huge.jsonl"
    with path.open("w") as file:
        file.write(json.dumps({"prompt": "first", "answer": "1"}) + "\n")
        file.write('{"prompt": "' + "x" * (20 * MAX_LINE_BYTES) + '", "answer": "2"}\n')  # 20 MiB
        file.write(json.dumps({"prompt": "after", "answer": "3"}) + "\n")
    tracemalloc.start()
    try:
        report = load_dataset_rows(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [p.prompt for p in report.problems] == ["first", "after"]
    assert report.errors == [RowError(2, f"line longer than {MAX_LINE_BYTES} bytes")]
    assert peak < 5 * MAX_LINE_BYTES  # a few 1 MiB pieces at a time, never the 20 MiB line


def test_binary_junk_is_refused_with_its_first_errors(tmp_path):
    path = tmp_path / "junk.jsonl"
    path.write_bytes(bytes(range(256)) * 40 + b"\n\x00\x01\n\xff\xfe\xfd\n")
    with pytest.raises(DatasetError) as caught:
        load_dataset_rows(path)
    message = str(caught.value)
    assert message.startswith("no usable rows in junk.jsonl: all")
    assert "not UTF-8 text (byte 0x80" in message  # 0x0a in the junk splits it into lines
    assert caught.value.errors and all(isinstance(e, RowError) for e in caught.value.errors)


def test_a_file_of_only_bad_rows_is_refused_quoting_them(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "", "answer": "1"}, "nope"])
    with pytest.raises(DatasetError) as caught:
        load_dataset_rows(path)
    assert str(caught.value) == (
        "no usable rows in bad.jsonl: all 2 rows were rejected "
        "(line 1: empty prompt (column 'prompt'); line 2: invalid JSON: Expecting value at column 1)"
    )
    assert [e.line for e in caught.value.errors] == [1, 2]


def test_an_empty_file_is_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DatasetError, match="empty.jsonl holds no rows"):
        load_dataset_rows(tmp_path / "empty.jsonl")


def test_deep_nesting_and_giant_numbers_are_row_errors_not_crashes(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    giant = '{"prompt": "p", "answer": ' + "9" * 5000 + "}"
    path = write_jsonl(tmp_path / "d.jsonl", [deep, giant, {"prompt": "ok", "answer": "1"}])
    report = load_dataset_rows(path)
    assert [p.prompt for p in report.problems] == ["ok"]
    assert [e.line for e in report.errors] == [1, 2]
    assert all(e.reason.startswith("invalid JSON") for e in report.errors)


def test_a_mapped_column_the_file_lacks_names_the_columns_found(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "1"}])
    with pytest.raises(DatasetError, match=r"d.jsonl has no column 'prompt' \(prompt\); its columns are: question, a"):
        load_dataset_rows(path)
    (tmp_path / "d.csv").write_text("question,answer\nq,1\n")
    with pytest.raises(DatasetError, match=r"no column 'lvl' \(difficulty\); its columns are: question, answer"):
        load_dataset_rows(tmp_path / "d.csv", columns=ColumnMapping(prompt="question", difficulty="lvl"))


@pytest.mark.parametrize(
    "name, message",
    [
        ("data.txt", "cannot tell the format of data.txt from its suffix; name one of: jsonl, csv, parquet, hf_disk"),
        ("missing.jsonl", "no such file or folder"),
    ],
)
def test_unknown_formats_and_missing_files_are_refused(tmp_path, name, message):
    if name != "missing.jsonl":
        (tmp_path / name).write_text("prompt,answer\n")
    with pytest.raises(DatasetError, match=message):
        load_dataset_rows(tmp_path / name)


def test_a_folder_not_written_by_save_to_disk_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="datasets.save_to_disk did not write"):
        load_dataset_rows(tmp_path)


# ----------------------------------------------------------------- CSV
def test_a_csv_file_reports_the_line_each_bad_record_starts_on(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(
        b"prompt,answer,split\n"  # line 1: the header
        b"q1,1,train\n"  # 2
        b'"a prompt\non two lines",2,val\n'  # 3-4
        b"\xff\xfe,3,test\n"  # 5: not UTF-8
        b"q4,4\n"  # 6: a field short
        b"q5,,train\n"  # 7: empty answer
        b"q6,6,TEST\n"  # 8
    )
    report = load_dataset_rows(path, columns=ColumnMapping(split="split"))
    assert [(p.prompt, p.split) for p in report.problems] == [
        ("q1", "train"),
        ("a prompt\non two lines", "test"),
        ("q6", "test"),
    ]
    assert [(e.line, e.reason) for e in report.errors] == [
        (5, "not UTF-8 text (byte 0xff at column 1)"),
        (6, "2 fields where the header has 3"),
        (7, "empty answer (column 'answer')"),
    ]
    assert report.columns == ["prompt", "answer", "split"]


def test_a_csv_header_must_be_readable_and_unambiguous(tmp_path):
    (tmp_path / "a.csv").write_text("prompt,answer,prompt\nq,1,r\n")
    with pytest.raises(DatasetError, match="repeats the column"):
        load_dataset_rows(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_bytes(b"\xffprompt,answer\nq,1\n")
    with pytest.raises(DatasetError, match="cannot read the CSV header of b.csv: line 1: not UTF-8"):
        load_dataset_rows(tmp_path / "b.csv")


# ----------------------------------------------------------------- Parquet and saved datasets
def test_a_parquet_file_reports_rows_by_number(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "problem": ["p1", "p2", None, "p4"],
            "solution": [r"\boxed{1}", "no box", r"\boxed{3}", r"\boxed{4}"],
            "level": [1.0, 2.0, 3.0, None],
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    report = load_dataset_rows(
        tmp_path / "d.parquet", columns=ColumnMapping(prompt="problem", answer="solution"), answer_format="boxed"
    )
    assert [(p.prompt, p.answer) for p in report.problems] == [("p1", "1"), ("p4", "4")]
    assert [str(e) for e in report.errors] == [
        "row 2: no \\boxed{...} in the answer",
        "row 3: empty prompt (column 'problem')",
    ]
    assert report.columns == ["problem", "solution", "level"]
    # A missing difficulty cell in a mapped column is an error, not a silent default.
    report = load_dataset_rows(
        tmp_path / "d.parquet", columns=ColumnMapping(prompt="problem", answer="solution", difficulty="level")
    )
    assert [str(e) for e in report.errors] == [
        "row 3: empty prompt (column 'problem')",
        "row 4: empty difficulty (column 'level')",
    ]


def test_a_file_that_is_not_parquet_is_refused(tmp_path):
    (tmp_path / "fake.parquet").write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(DatasetError, match="fake.parquet is not a readable Parquet file"):
        load_dataset_rows(tmp_path / "fake.parquet")


def test_a_saved_dataset_dict_gives_rows_their_split(tmp_path):
    import datasets

    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"prompt": ["a", "b"], "answer": ["1", "2"]}),
            "validation": datasets.Dataset.from_dict({"prompt": ["c", ""], "answer": ["3", "4"]}),
        }
    ).save_to_disk(tmp_path / "saved")
    report = load_dataset_rows(tmp_path / "saved")
    assert report.format == "hf_disk"
    assert [(p.prompt, p.split) for p in report.problems] == [("a", "train"), ("b", "train"), ("c", "test")]
    assert [str(e) for e in report.errors] == ["row 4: empty prompt (column 'prompt')"]

    datasets.Dataset.from_dict({"q": ["x", "y"], "a": ["1", "2"]}).save_to_disk(tmp_path / "single")
    report = load_dataset_rows(tmp_path / "single", columns=ColumnMapping(prompt="q", answer="a"))
    assert [(p.prompt, p.split) for p in report.problems] == [("x", None), ("y", None)]

    datasets.DatasetDict({"extra": datasets.Dataset.from_dict({"prompt": ["a"], "answer": ["1"]})}).save_to_disk(
        tmp_path / "odd"
    )
    with pytest.raises(DatasetError, match="split 'extra', neither train nor test"):
        load_dataset_rows(tmp_path / "odd")


# ----------------------------------------------------------------- templates
def test_a_template_wraps_the_prompt():
    template = "Question: {prompt}\nShow your work in {{braces}}.\nAnswer:"
    check_template(template)
    assert apply_template(template, "2+2? {x}") == "Question: 2+2? {x}\nShow your work in {braces}.\nAnswer:"
    assert apply_template(None, "as is") == "as is"


@pytest.mark.parametrize(
    "template, reason",
    [
        ("no slot", "no {prompt} placeholder"),
        ("{prompt} and {prompt}", "{prompt} 2 times"),
        ("{question}", "unknown placeholder {question}"),
        ("{prompt} {}", "unknown placeholder {}"),
        ("{prompt} in {braces}", "unknown placeholder {braces}"),
        ("{prompt:>10}", "without a format spec"),
        ("{prompt!r}", "without a format spec or conversion"),
        ("{prompt} }", "Single '}'"),
        ("{ {prompt}", "write a literal brace as {{ or }}"),
    ],
)
def test_a_bad_template_says_why(template, reason):
    with pytest.raises(ValueError) as caught:
        check_template(template)
    assert reason in str(caught.value)


# ----------------------------------------------------------------- the dataset spec
def dataset_problems(section) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        parse_spec({"dataset": section})
    return dict(caught.value.problems)


def test_a_file_dataset_spec_resolves_its_name_format_and_verifier(tmp_path):
    path = write_jsonl(tmp_path / "my-problems.jsonl", numbered(3))
    dataset = parse_spec({"dataset": {"path": path}}).dataset
    resolved = (dataset.name, dataset.format, dataset.verifier, dataset.answer_format)
    assert resolved == ("my-problems", "jsonl", "math", "plain")
    assert parse_spec({}).dataset.verifier is None  # the built-in task keeps its own checker


def test_a_stored_dataset_section_parses_back_to_itself(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", numbered(3))
    for data in ({}, {"dataset": {"path": path, "columns": {"id": "prompt"}, "template": "Q: {prompt}"}}):
        spec = parse_spec(data)
        assert parse_spec(spec.model_dump()) == spec


def test_dataset_spec_problems_name_their_field(tmp_path):
    (tmp_path / "data.txt").write_text("x")
    assert dataset_problems({"path": str(tmp_path / "nope.jsonl")}) == {
        "dataset.path": f"no such file or folder: {tmp_path / 'nope.jsonl'}"
    }
    unknown_suffix = dataset_problems({"path": str(tmp_path / "data.txt")})
    assert "cannot tell the format of data.txt" in unknown_suffix["dataset.format"]
    good = write_jsonl(tmp_path / "d.jsonl", numbered(3))
    problems = dataset_problems(
        {"path": good, "verifier": "regex", "template": "{q}", "columns": {"prompt": "q", "typo": "x"}}
    )
    assert problems["dataset.verifier"] == "unknown verifier 'regex'; choose one of: arith, exact, math, numeric"
    assert "unknown placeholder {q}" in problems["dataset.template"]
    assert problems["dataset.columns.typo"] == "Extra inputs are not permitted"
    assert "dataset.format" in dataset_problems({"path": good, "format": "xlsx"})
    assert "dataset.answer_format" in dataset_problems({"path": good, "answer_format": "latex"})


def test_file_settings_without_a_path_are_refused_not_ignored():
    assert dataset_problems({"name": "gsm8k"}) == {"dataset.name": "unknown built-in task 'gsm8k'; choose one of: arith"}
    problems = dataset_problems(
        {"template": "Q: {prompt}", "verifier": "math", "answer_format": "gsm8k", "columns": {"prompt": "q"}}
    )
    assert problems == {
        "dataset.columns": "only for a dataset file: set dataset.path",
        "dataset.answer_format": "only for a dataset file: set dataset.path",
        "dataset.template": "only for a dataset file: set dataset.path",
        "dataset.verifier": "a built-in task scores with its own checker; a verifier needs dataset.path",
    }


# ----------------------------------------------------------------- FileTask
def file_task(tmp_path, rows, **dataset) -> FileTask:
    path = write_jsonl(tmp_path / "task.jsonl", rows)
    return resolve_task(parse_spec({"dataset": {"path": path, **dataset}}).dataset)


def test_without_a_split_column_a_fifth_at_most_is_held_out_by_hash(tmp_path):
    task = file_task(tmp_path, numbered(100), eval_size=8)
    train, test = task.problems("train", 1000, seed=0), task.problems("test", 1000, seed=0)
    assert (len(train), len(test)) == (92, 8)  # eval_size 8 < 100 / 5
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert {p.split for p in train} == {"train"} and {p.split for p in test} == {"test"}
    # Deterministic, prefix-stable and seeded; the held-out set depends on neither seed nor count.
    assert task.problems("train", 10, seed=3) == task.problems("train", 40, seed=3)[:10]
    assert task.problems("train", 10, seed=3) != task.problems("train", 10, seed=4)
    assert {p.id for p in task.problems("test", 8, seed=5)} == {p.id for p in test}

    small = file_task(tmp_path, numbered(12), eval_size=256)
    assert len(small.problems("test", 256, seed=0)) == 2  # 12 // 5: training keeps most of a small file
    with pytest.raises(DatasetError, match="one usable row cannot be both"):
        file_task(tmp_path, numbered(1))


def test_a_split_column_decides_the_splits(tmp_path):
    rows = [{**row, "part": "test" if i % 4 == 0 else "train"} for i, row in enumerate(numbered(20))]
    task = file_task(tmp_path, rows, columns={"split": "part"})
    assert len(task.problems("train", 100, seed=0)) == 15 and len(task.problems("test", 100, seed=0)) == 5
    with pytest.raises(DatasetError, match="marks no row as test"):
        file_task(tmp_path, [{**row, "part": "train"} for row in numbered(5)], columns={"split": "part"})


def test_a_file_task_applies_the_template_and_scores_with_the_named_verifier(tmp_path):
    rows = [{"prompt": "half of one?", "answer": r"\frac{1}{2}"}, *numbered(9)]
    task = file_task(tmp_path, rows, template="Q: {prompt}\nA:", eval_size=1)
    everything = task.problems("train", 100, seed=0) + task.problems("test", 100, seed=0)
    half = next(p for p in everything if p.answer == r"\frac{1}{2}")
    assert half.prompt == "Q: half of one?\nA:" and half.id == prompt_id("half of one?")
    assert task.score(half, r"it is \boxed{0.5}") == 1.0  # math, the default for files
    assert task.score(half, r"\boxed{0.25}") == 0.0
    exact_task = file_task(tmp_path, rows, verifier="exact", eval_size=1)
    assert exact_task.score(half, r"\boxed{0.5}") == 0.0


def test_resolve_task_reads_a_file_once_and_knows_the_built_in_tasks(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", numbered(10))
    dataset = parse_spec({"dataset": {"path": path}}).dataset
    assert resolve_task(dataset) is resolve_task(dataset)
    write_jsonl(tmp_path / "t.jsonl", numbered(20))  # a changed file is read again
    assert len(resolve_task(dataset).problems("train", 100, seed=0)) == 16
    assert resolve_task(parse_spec({}).dataset) is BUILTIN_TASKS.get("arith")


# ----------------------------------------------------------------- the shipped sample
def test_the_shipped_sample_is_generated_here_and_loads_cleanly():
    assert SAMPLE_PATH.read_text() == sample_text()
    report = load_dataset_rows(
        SAMPLE_PATH, columns=ColumnMapping(prompt="question", id="id", difficulty="difficulty"), answer_format="gsm8k"
    )
    assert len(report.problems) == 100 and report.errors == []
    assert {p.difficulty for p in report.problems} == {1.0, 2.0}
    # Every worked solution reaches its own answer: the gsm8k marker and the math verifier agree.
    from engine.verifiers import VERIFIERS

    assert all(VERIFIERS.get("math")(p.solution, p.answer) == 1.0 for p in report.problems)
    assert any("," in p.solution.rsplit("####", 1)[1] for p in report.problems)  # thousands commas


# ----------------------------------------------------------------- training on a file
def sample_spec(**dataset) -> dict:
    return {
        "dataset": {
            "path": str(SAMPLE_PATH),
            "columns": {"prompt": "question", "id": "id", "difficulty": "difficulty"},
            "answer_format": "gsm8k",
            "eval_size": 4,
            **dataset,
        },
        "rollout": {"prompts_per_step": 2, "n": 2, "max_new_tokens": 16},
        "training": {"steps": 1, "eval_every": 0},
        "resources": {"executor": "inprocess"},
    }


def test_the_recipe_draws_its_prompts_from_the_file(tmp_path):
    from engine.recipes.sync import SyncRecipe

    recipe = SyncRecipe(parse_spec(sample_spec(template="{prompt}\nAnswer:")))
    assert isinstance(recipe.task, FileTask)
    ids = {p.id for p in recipe.sampler.pool}
    assert len(ids) == 96 and all(i.startswith("sample-") for i in ids)  # 100 rows, eval_size 4 held out
    assert not ids & {p.id for p in recipe.eval_problems} and len(recipe.eval_problems) == 4
    assert all(item.problem.prompt.endswith("\nAnswer:") for item in recipe.sampler.next(1, 5))


def test_a_run_trains_one_step_on_a_jsonl_file():
    # The built-in model reads digits, not English, so this proves the path, not learning.
    from engine.events import ListSink
    from engine.orchestration import run

    sink = ListSink()
    assert run(parse_spec(sample_spec()), sink) == "succeeded"

    trained = [m for m in sink.of_kind("metrics") if "reward/mean" in m.values]
    assert [m.step for m in trained] == [1]
    assert 0.0 <= trained[0].values["reward/mean"] <= 1.0
    evaluated = [m.values["val/acc/mean@1"] for m in sink.of_kind("metrics") if "val/acc/mean@1" in m.values]
    assert len(evaluated) == 2 and all(0.0 <= value <= 1.0 for value in evaluated)
    results = [r for event in sink.of_kind("prompt_results") for r in event.results]
    assert results and all(r.prompt_id.startswith("sample-") for r in results)
