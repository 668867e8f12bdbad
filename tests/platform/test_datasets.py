"""Stored datasets: preview and splits, who may see them, runs that reference them, and
each prompt's difficulty history fed from those runs' prompt_results events."""

import json
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from catalog.models import Dataset, PromptStat, RunInputs
from engine.events import PromptResult, PromptResults
from runs import lifecycle
from runs import attempts as run_attempts
from runs import launch as run_launch
from runs.models import Run

ROWS = [
    {"q": f"{a} + {b} =", "a": str(a + b), "part": "test" if a % 4 == 0 else "train", "level": a % 3}
    for a, b in zip(range(12), range(5, 17), strict=True)
]
# a = 0, 4, 8 are test rows: 3 test, 9 train.
COLUMNS = {"prompt": "q", "answer": "a", "split": "part", "difficulty": "level"}


@pytest.fixture(autouse=True)
def data_dir(tmp_path, settings) -> Path:
    settings.ROLLYARD_DATA_DIR = tmp_path / "data"
    return settings.ROLLYARD_DATA_DIR


@pytest.fixture
def dataset(teams) -> Dataset:
    content = b"".join(json.dumps(row).encode() + b"\n" for row in ROWS)
    response = teams.client(teams.member).post(
        "/api/datasets/",
        {"file": SimpleUploadedFile("sums.jsonl", content), "name": "sums", "team": "ml", "columns": json.dumps(COLUMNS)},
        format="multipart",
    )
    assert response.status_code == 201, response.json()
    return Dataset.objects.get(pk=response.json()["id"])


def test_split_counts_come_from_the_split_column(dataset):
    assert dataset.split_counts == {"train": 9, "test": 3}
    assert dataset.row_count == 12


def test_the_preview_lists_rows_in_file_order_and_filters_by_split(dataset, teams):
    api = teams.client(teams.member)

    everything = api.get(f"/api/datasets/{dataset.pk}/records/?limit=5").json()
    test_rows = api.get(f"/api/datasets/{dataset.pk}/records/?split=test").json()

    assert everything["count"] == 12
    assert [row["prompt"] for row in everything["results"]] == [row["q"] for row in ROWS[:5]]
    assert [row["difficulty"] for row in everything["results"]] == [0.0, 1.0, 2.0, 0.0, 1.0]
    assert [row["prompt"] for row in test_rows["results"]] == ["0 + 5 =", "4 + 9 =", "8 + 13 ="]
    assert {row["split"] for row in test_rows["results"]} == {"test"}


def test_a_viewer_sees_the_dataset_and_another_team_does_not(dataset, teams):
    assert teams.client(teams.viewer).get(f"/api/datasets/{dataset.pk}/").status_code == 200
    stranger = teams.client(teams.outsider)

    for url in (f"/api/datasets/{dataset.pk}/", f"/api/datasets/{dataset.pk}/records/"):
        response = stranger.get(url)
        assert response.status_code == 404, url
    assert stranger.get("/api/datasets/").json()["count"] == 0


def launch(client: APIClient, spec: dict, team: str = "ml"):
    return client.post("/api/runs/", {"spec": spec, "team": team}, format="json")


def test_a_run_launched_from_a_dataset_reference_stores_the_resolved_spec_and_the_link(dataset, teams):
    response = launch(teams.client(teams.member), {"dataset": {"catalog": "ml/sums", "eval_size": 3}, "training": {"steps": 2}})

    assert response.status_code == 201, response.json()
    run = Run.objects.get(pk=response.json()["id"])
    assert run.spec["dataset"]["path"] == dataset.path
    assert run.spec["dataset"]["format"] == "jsonl"
    assert run.spec["dataset"]["columns"]["prompt"] == "q"
    assert run.spec["dataset"]["eval_size"] == 3  # the override next to the reference wins
    assert "catalog" not in run.spec["dataset"]
    assert RunInputs.objects.get(run=run).dataset == dataset


def test_a_reference_cannot_be_pointed_at_another_file(dataset, teams, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text('{"prompt": "1 + 1 =", "answer": "2"}\n{"prompt": "2 + 2 =", "answer": "4"}\n')

    response = launch(teams.client(teams.member), {"dataset": {"catalog": "ml/sums", "path": str(other)}})

    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"dataset.path": ["give either a catalog reference or a path, not both"]}


def test_a_bare_dataset_name_means_the_launch_teams_dataset(dataset, teams):
    response = launch(teams.client(teams.member), {"dataset": {"catalog": "sums"}, "training": {"steps": 2}})

    assert response.status_code == 201, response.json()
    assert Run.objects.get().inputs.dataset == dataset


def test_another_teams_dataset_reads_exactly_like_a_missing_one(dataset, teams):
    api = teams.client(teams.outsider)

    foreign = launch(api, {"dataset": {"catalog": "ml/sums"}}, team="other")
    missing = launch(api, {"dataset": {"catalog": "ml/nothing"}}, team="other")

    assert foreign.status_code == missing.status_code == 400
    assert list(foreign.json()["error"]["fields"]) == ["dataset.catalog"]
    assert foreign.json()["error"]["fields"]["dataset.catalog"][0].replace("sums", "nothing") == (
        missing.json()["error"]["fields"]["dataset.catalog"][0]
    )
    assert Run.objects.count() == 0


def test_prompt_results_of_a_run_become_each_prompts_difficulty_history(dataset, teams, record):
    run_id = launch(teams.client(teams.member), {"dataset": {"catalog": "ml/sums"}, "training": {"steps": 2}}).json()["id"]
    first, second = dataset.records.order_by("position")[:2]

    def result(record, attempts, successes):
        return PromptResult(
            prompt_id=record.prompt_id, difficulty=0.0, attempts=attempts, successes=successes, mean_length=12.0
        )

    record(
        run_id,
        [
            PromptResults(step=1, results=[result(first, 8, 6), result(second, 8, 0)]),
            PromptResults(step=2, results=[result(first, 8, 2)]),
            PromptResults(step=2, split="test", results=[result(second, 4, 4)]),
        ],
    )

    assert PromptStat.objects.count() == 4
    api = teams.client(teams.viewer)  # a viewer of the team reads the history
    rows = {row["prompt_id"]: row for row in api.get(f"/api/datasets/{dataset.pk}/records/?limit=3").json()["results"]}
    # first: 6 + 2 successes of 8 + 8 attempts = 0.5; second: 0 + 4 of 8 + 4 = 1/3;
    # the third prompt was never tried.
    assert (rows[first.prompt_id]["attempts"], rows[first.prompt_id]["pass_rate"]) == (16, 0.5)
    assert rows[second.prompt_id]["pass_rate"] == pytest.approx(1 / 3)
    assert [row["pass_rate"] for row in rows.values()][2] is None
    history = api.get(f"/api/datasets/{dataset.pk}/records/{first.pk}/").json()["history"]
    assert [(h["run"], h["step"], h["split"], h["successes"], h["attempts"]) for h in history] == [
        (run_id, 1, "train", 6, 8),
        (run_id, 2, "train", 2, 8),
    ]


def test_prompt_results_of_a_run_without_a_catalog_dataset_add_no_history(dataset, teams, record):
    run = run_launch.create_run(teams.member, {"training": {"steps": 2}}, team=dataset.team)

    record(
        run.pk,
        [PromptResults(step=1, results=[PromptResult(prompt_id="0", difficulty=1, attempts=8, successes=1, mean_length=3)])],
    )

    assert PromptStat.objects.count() == 0


# --- pages -------------------------------------------------------------------------------------


def test_the_dataset_pages_show_the_preview_splits_and_a_prompts_history(dataset, client, teams):
    client.force_login(teams.member)
    record = dataset.records.order_by("position").first()

    listing = client.get("/datasets/")
    detail = client.get(f"/datasets/{dataset.pk}/?split=test")
    prompt = client.get(f"/datasets/{dataset.pk}/prompts/{record.pk}/")

    assert listing.status_code == detail.status_code == prompt.status_code == 200
    assert "ml/sums" in listing.content.decode()
    page = detail.content.decode()
    assert "train</a> 9" in page and "test</a> 3" in page
    assert "4 + 9 =" in page and "1 + 6 =" not in page  # only the test split
    assert "No run has trained or evaluated on this prompt yet." in prompt.content.decode()


def test_the_upload_form_stores_a_dataset_and_lists_bad_rows_on_failure(client, teams):
    client.force_login(teams.member)
    good = b'{"prompt": "1 + 1 =", "answer": "2"}\n{"prompt": "2 + 2 =", "answer": "4"}\n'

    bad_response = client.post(
        "/datasets/", {"file": SimpleUploadedFile("x.jsonl", good + b"{oops\n"), "name": "form", "team": "ml"}
    )
    good_response = client.post("/datasets/", {"file": SimpleUploadedFile("x.jsonl", good), "name": "form", "team": "ml"})

    assert bad_response.status_code == 400
    bad_page = bad_response.content.decode()
    assert "line 3: invalid JSON" in bad_page
    # The page names its own checkbox, not the API's parameter; one bad row of three is "is".
    assert "1 of 3 rows is invalid; nothing was stored (fix them, or tick “keep the good rows” and upload again)" in bad_page
    assert "skip_bad_rows to" not in bad_page
    assert good_response.status_code == 302, good_response.content.decode()[-3000:]
    assert Dataset.objects.get().reference == "ml/form"
    stored_page = client.get(good_response["Location"]).content.decode()
    assert "stored 2 rows as ml/form" in stored_page and "2 rows," in stored_page


def test_another_teams_dataset_page_is_404(dataset, client, teams):
    client.force_login(teams.outsider)

    assert client.get(f"/datasets/{dataset.pk}/").status_code == 404


def test_a_clone_launched_from_a_resolved_spec_stays_linked_to_its_dataset(dataset, teams):
    api = teams.client(teams.member)
    first = launch(api, {"dataset": {"catalog": "ml/sums"}, "training": {"steps": 2}}).json()
    resolved_spec = Run.objects.get(pk=first["id"]).spec

    clone = launch(api, resolved_spec)

    assert clone.status_code == 201, clone.json()
    assert Run.objects.get(pk=clone.json()["id"]).inputs.dataset == dataset


def test_a_real_run_on_a_catalog_dataset_fills_its_prompts_history(teams):
    # The engine's shipped sample file, uploaded like any file, trained on for one step by
    # the real engine in-process through the worker's sink (the Celery task's body).
    from engine.data.sample import SAMPLE_PATH
    from engine.orchestration import run as run_engine
    from engine.spec import parse_spec
    from workers.attempt import AttemptFence
    from workers.sink import DatabaseSink

    api = teams.client(teams.member)
    columns = {"prompt": "question", "id": "id", "difficulty": "difficulty"}
    uploaded = api.post(
        "/api/datasets/",
        {"file": SimpleUploadedFile("sample.jsonl", SAMPLE_PATH.read_bytes()), "name": "sample", "team": "ml",
         "columns": json.dumps(columns), "answer_format": "gsm8k"},
        format="multipart",
    )  # fmt: skip
    assert uploaded.status_code == 201, uploaded.json()
    spec = {
        "dataset": {"catalog": "ml/sample", "eval_size": 2},
        "rollout": {"prompts_per_step": 2, "n": 2, "max_new_tokens": 8},
        "training": {"steps": 1, "eval_every": 0},
        "resources": {"executor": "inprocess"},
    }
    run = Run.objects.get(pk=launch(api, spec).json()["id"])
    lifecycle.transition(run.pk, "admitted", "admitted by the test")
    claim = run_attempts.claim_run(run.pk, "host-a", 1111)
    sink = DatabaseSink(AttemptFence(run.pk, claim.attempt.pk, outage_s=5))

    assert run_engine(parse_spec(run.spec), sink) == "succeeded"
    sink.flush()

    reported = [
        (event.payload["split"], result["prompt_id"])
        for event in run.events.filter(kind="prompt_results")
        for result in event.payload["results"]
    ]
    stats = PromptStat.objects.filter(run=run)
    # Every prompt the engine reported is one of the dataset's records: 2 trained at step
    # 1, and the 2 held-out prompts at the evaluations before and after it.
    assert sorted((stat.split, stat.record.prompt_id) for stat in stats) == sorted(reported)
    assert stats.filter(split="train").count() == 2
    assert stats.filter(split="test").values("record").distinct().count() == 2
