"""A run's difficulty store through the platform: the engine's `difficulty` events,
recorded through record_events as a driver sends them, become one row per prompt (the
latest winning, also across a resumed attempt), read by anyone in the run's team from
GET /api/runs/<id>/prompts/ (sorted, paginated, filtered by mean and interval), and feed
the catalog's per-prompt records of the dataset the run trained on. The heatmap of pass
rate by difficulty bucket over steps comes from the per-step `prompt_results` events.

The events come from the engine's own DifficultyStore (uniform prior Beta(1, 1)), fed
outcomes whose posteriors are worked out by hand in each test."""

import json
from datetime import UTC, datetime

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from catalog.models import Dataset, PromptRunDifficulty
from engine.events import DifficultyUpdates, PromptResult, PromptResults
from engine.sampling.difficulty import DifficultyStore
from runs import telemetry
from runs import attempts as run_attempts
from runs.models import AttemptOutcome, RunAttempt, RunEvent, RunPromptDifficulty, RunStatus


def step_of(
    store: DifficultyStore, step: int, outcomes: dict[str, list[bool]], wall_time: float = 1e9
) -> DifficultyUpdates:
    """Step `step` of a run: each prompt gets one rollout per outcome, verified as given."""
    store.allocate(step, [(prompt_id, len(results)) for prompt_id, results in outcomes.items()])
    store.observe(step, [(prompt_id, correct) for prompt_id, results in outcomes.items() for correct in results])
    return DifficultyUpdates(step=step, prompts=store.changes(), wall_time=wall_time)


def hits(successes: int, attempts: int) -> list[bool]:
    return [True] * successes + [False] * (attempts - successes)


@pytest.fixture
def run(teams, make_run):
    return make_run(teams.member, status=RunStatus.RUNNING, team=teams.team)


def rows_of(response) -> dict[str, dict]:
    assert response.status_code == 200, response.json()
    return {row["prompt_id"]: row for row in response.json()["results"]}


def test_difficulty_events_become_one_row_per_prompt_with_the_latest_totals(teams, run, record):
    store = DifficultyStore()
    record(run.pk, [step_of(store, 1, {"a": hits(6, 8), "b": hits(0, 8)})])
    record(run.pk, [step_of(store, 2, {"a": hits(2, 8)})])  # only a changed at step 2

    rows = rows_of(teams.client(teams.viewer).get(f"/api/runs/{run.pk}/prompts/"))

    # a: 6 + 2 = 8 successes of 16 → Beta(1 + 8, 1 + 8) = Beta(9, 9), mean 0.5; seen at 2.
    a = rows["a"]
    assert (a["attempts"], a["successes"], a["alpha"], a["beta"], a["mean"]) == (16, 8, 9.0, 9.0, 0.5)
    assert (a["last_step"], a["allocated"], a["step"]) == (2, 8, 2)
    # b: 0 of 8 → Beta(1, 9), mean 1/10, last rolled out at step 1 (its row is step 1's).
    b = rows["b"]
    assert (b["attempts"], b["successes"], b["alpha"], b["beta"], b["last_step"], b["step"]) == (8, 0, 1.0, 9.0, 1, 1)
    assert b["mean"] == pytest.approx(0.1)
    # The 90% interval as the engine's store gave it, around the mean.
    assert (b["low"], b["high"]) == pytest.approx(store.credible_interval("b"))
    assert 0 < b["low"] < b["mean"] < b["high"] < 0.5
    assert a["samples_url"] == f"/api/runs/{run.pk}/prompts/a/samples/"
    assert RunPromptDifficulty.objects.filter(run=run).count() == 2
    # Stored in their table only, not a second time as generic events.
    assert not RunEvent.objects.filter(run=run, kind="difficulty").exists()


def test_the_table_sorts_pages_and_filters_by_the_interval(teams, run, record):
    store = DifficultyStore()
    # Successes of 8: p0 8, p1 6, p2 4, p3 2, p4 0 → means (1 + s) / 10 = 0.9, 0.7, 0.5, 0.3, 0.1.
    record(run.pk, [step_of(store, 1, {f"p{i}": hits(8 - 2 * i, 8) for i in range(5)})])
    # p3 again at step 2 with 2 of 4: 4 of 12 → Beta(5, 9), mean 5/14 ≈ 0.357.
    record(run.pk, [step_of(store, 2, {"p3": hits(2, 4)})])
    api = teams.client(teams.viewer)
    url = f"/api/runs/{run.pk}/prompts/"

    first_page = api.get(url, {"ordering": "-mean", "limit": 2}).json()
    second_page = api.get(url, {"ordering": "-mean", "limit": 2, "offset": 2}).json()
    by_attempts = api.get(url, {"ordering": "-attempts,prompt_id"}).json()["results"]
    by_last_step = api.get(url, {"ordering": "-last_step"}).json()["results"]
    by_allocated = api.get(url, {"ordering": "allocated"}).json()["results"]

    assert first_page["count"] == 5
    assert [row["prompt_id"] for row in first_page["results"]] == ["p0", "p1"]
    assert [row["prompt_id"] for row in second_page["results"]] == ["p2", "p3"]
    assert [row["prompt_id"] for row in by_attempts] == ["p3", "p0", "p1", "p2", "p4"]  # 12, then four of 8
    assert by_last_step[0]["prompt_id"] == "p3"
    # p3 was allocated 4 at step 2, the others 8 at step 1; ties in prompt id order.
    assert [row["prompt_id"] for row in by_allocated] == ["p3", "p0", "p1", "p2", "p4"]

    # Surely hard: the interval's upper end at most 0.5 (p4's Beta(1, 9) ends at 1 − 0.05^(1/9) ≈ 0.28,
    # p3's Beta(5, 9) near 0.36 + 1.645 × 0.12 ≈ 0.56). Surely easy: its lower end at least 0.6
    # (p0's Beta(9, 1) starts at 0.05^(1/9) ≈ 0.72; p1's Beta(7, 3) near 0.7 − 1.645 × 0.14 ≈ 0.47).
    hard = rows_of(api.get(url, {"high_max": 0.5}))
    easy = rows_of(api.get(url, {"low_min": 0.6}))
    middle = rows_of(api.get(url, {"mean_min": 0.3, "mean_max": 0.7}))
    assert set(hard) == {"p4"}
    assert set(easy) == {"p0"}
    assert set(middle) == {"p1", "p2", "p3"}  # 0.7, 0.5, 0.357


def test_bad_query_parameters_are_400s_naming_them(teams, run, error_of):
    api = teams.client(teams.viewer)

    ordering = api.get(f"/api/runs/{run.pk}/prompts/", {"ordering": "reward"})
    mean = api.get(f"/api/runs/{run.pk}/prompts/", {"mean_min": "half"})

    assert ordering.status_code == mean.status_code == 400
    assert list(error_of(ordering)["fields"]) == ["ordering"]
    assert list(error_of(mean)["fields"]) == ["mean_min"]


def test_every_role_of_the_team_reads_it_and_nobody_else(teams, run, record, client):
    record(run.pk, [step_of(DifficultyStore(), 1, {"a": hits(1, 2)})])
    url = f"/api/runs/{run.pk}/prompts/"

    for user in (teams.viewer, teams.member, teams.admin):
        assert teams.client(user).get(url).json()["count"] == 1
    # Another team's run reads exactly like a missing one; no credentials, 401.
    stranger = teams.client(teams.outsider)
    assert stranger.get(url).status_code == stranger.get("/api/runs/999999/prompts/").status_code == 404
    assert client.get(url).status_code == 401


def test_a_resumed_attempt_replaces_what_the_lost_one_reported(teams, run, record):
    # Attempt 1 reports steps 1 and 2, checkpointed after step 1, then its worker is lost.
    store = DifficultyStore()
    record(run.pk, [step_of(store, 1, {"a": hits(4, 8)})])
    checkpoint = store.state_dict()
    record(run.pk, [step_of(store, 2, {"a": hits(8, 8)})])
    lost = RunAttempt.objects.get(run=run)
    RunAttempt.objects.filter(pk=lost.pk).update(ended_at=timezone.now(), outcome=AttemptOutcome.LOST)

    # Attempt 2 resumes from step 1's checkpoint and samples step 2 afresh: 0 of 8.
    resumed = DifficultyStore()
    resumed.load_state_dict(checkpoint)
    record(run.pk, [step_of(resumed, 2, {"a": hits(0, 8)})])
    # The lost attempt's late batch is refused and changes nothing.
    with pytest.raises(run_attempts.AttemptSuperseded):
        telemetry.record_events(run.pk, lost.pk, [step_of(store, 3, {"a": hits(8, 8)})])

    (row,) = teams.client(teams.viewer).get(f"/api/runs/{run.pk}/prompts/").json()["results"]
    # 4 + 0 successes of 16 → Beta(5, 13): attempt 2's step 2, not attempt 1's 12 of 16.
    assert (row["attempts"], row["successes"], row["alpha"], row["beta"], row["last_step"]) == (16, 4, 5.0, 13.0, 2)


# --- the catalog's per-prompt records -------------------------------------------------------


ROWS = [{"id": f"q{i}", "q": f"{i} + 1 =", "a": str(i + 1)} for i in range(4)]


@pytest.fixture
def dataset(teams, tmp_path, settings) -> Dataset:
    settings.ROLLYARD_DATA_DIR = tmp_path / "data"
    content = b"".join(json.dumps(row).encode() + b"\n" for row in ROWS)
    columns = json.dumps({"prompt": "q", "answer": "a", "id": "id"})
    response = teams.client(teams.member).post(
        "/api/datasets/",
        {"file": SimpleUploadedFile("plus.jsonl", content), "name": "plus", "team": "ml", "columns": columns},
        format="multipart",
    )
    assert response.status_code == 201, response.json()
    return Dataset.objects.get(pk=response.json()["id"])


def launch_on(teams, dataset: Dataset) -> int:
    spec = {"dataset": {"catalog": f"ml/{dataset.name}"}, "training": {"steps": 2}}
    response = teams.client(teams.member).post("/api/runs/", {"spec": spec, "team": "ml"}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def test_difficulty_of_runs_on_a_catalog_dataset_feeds_its_per_prompt_records(teams, dataset, record):
    first_run, second_run = launch_on(teams, dataset), launch_on(teams, dataset)
    day = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    store = DifficultyStore()
    record(first_run, [step_of(store, 1, {"q0": hits(3, 4), "q1": hits(0, 4)}, wall_time=day)])
    step_two = {"q0": hits(1, 4), "not-in-the-dataset": hits(1, 1), "nul\x00id": hits(0, 1)}
    record(first_run, [step_of(store, 2, step_two, wall_time=day + 60)])
    other = DifficultyStore()
    record(second_run, [step_of(other, 1, {"q0": hits(2, 2)}, wall_time=day + 3600)])
    api = teams.client(teams.viewer)

    records = {row["prompt_id"]: row for row in api.get(f"/api/datasets/{dataset.pk}/records/").json()["results"]}
    q0 = dataset.records.get(prompt_id="q0")
    detail = api.get(f"/api/datasets/{dataset.pk}/records/{q0.pk}/").json()

    # q0: both runs hold it, the second last reported it, an hour after the first began.
    assert (records["q0"]["runs_seen"], records["q0"]["last_seen_at"]) == (2, "2026-03-01T01:00:00Z")
    assert (records["q1"]["runs_seen"], records["q1"]["last_seen_at"]) == (1, "2026-03-01T00:00:00Z")
    assert (records["q2"]["runs_seen"], records["q2"]["last_seen_at"]) == (0, None)
    # Each run's posterior, most recently seen first: the second run's 2 of 2 → Beta(3, 1);
    # the first run's 3 + 1 = 4 of 8 → Beta(5, 5), mean 0.5, last rolled out at step 2.
    posteriors = [(row["run"], row["attempts"], row["successes"], row["alpha"], row["beta"]) for row in detail["difficulty"]]
    assert posteriors == [
        (second_run, 2, 2, 3.0, 1.0),
        (first_run, 8, 4, 5.0, 5.0),
    ]
    assert (detail["difficulty"][1]["mean"], detail["difficulty"][1]["last_step"]) == (0.5, 2)
    # The prompts the dataset lacks are in the run's table, not in the catalog; a NUL,
    # which PostgreSQL cannot store, is kept as the replacement character.
    assert PromptRunDifficulty.objects.count() == 3  # q0 × 2 runs, q1
    assert set(RunPromptDifficulty.objects.filter(run_id=first_run).values_list("prompt_id", flat=True)) == {
        "q0", "q1", "not-in-the-dataset", "nul\ufffdid",
    }  # fmt: skip


# --- the heatmap of pass rate by difficulty bucket over steps --------------------------------


def results_of(step: int, outcomes: dict[str, tuple[float, int, int]], split: str = "train") -> PromptResults:
    """prompt id → (the dataset's difficulty, attempts, successes) at `step`."""
    return PromptResults(
        step=step,
        split=split,
        results=[
            PromptResult(prompt_id=pid, difficulty=level, attempts=a, successes=s, mean_length=10.0)
            for pid, (level, a, s) in outcomes.items()
        ],
    )


def test_the_heatmap_buckets_prompts_by_difficulty_over_steps(teams, run, record):
    store = DifficultyStore()
    record(
        run.pk,
        [
            results_of(1, {"easy": (1, 4, 4), "mid": (2, 4, 2), "hard": (3, 4, 0)}),
            step_of(store, 1, {"easy": hits(4, 4), "mid": hits(2, 4), "hard": hits(0, 4)}),
        ],
    )
    record(run.pk, [results_of(2, {"easy": (1, 4, 3), "hard": (3, 4, 0)})])
    # The worker is lost; the resumed attempt reports step 2 again: hard now 1 of 4.
    RunAttempt.objects.filter(run=run).update(ended_at=timezone.now(), outcome=AttemptOutcome.LOST)
    record(run.pk, [results_of(2, {"easy": (1, 4, 3), "hard": (3, 4, 1)})])
    test_split = results_of(3, {"hard": (3, 4, 4)}, split="test")  # left out: the heatmap is of train
    record(run.pk, [results_of(3, {"mid": (2, 8, 6), "hard": (3, 8, 2)}), test_split])
    api = teams.client(teams.viewer)
    url = f"/api/runs/{run.pk}/prompts/heatmap/"

    by_level = api.get(url, {"buckets": 2}).json()
    merged = api.get(url, {"buckets": 2, "max_columns": 2}).json()
    by_mean = api.get(url, {"by": "mean", "buckets": 2}).json()

    # Difficulties 1 to 3 in 2 buckets of width 1: [1, 2) holds easy, [2, 3] mid and hard.
    assert by_level["edges"] == [1.0, 2.0, 3.0]
    assert by_level["steps"] == [1, 2, 3]
    assert by_level["attempts"] == [[4, 4, 0], [8, 4, 16]]
    # Step 1: mid 2 + hard 0 of 8; step 2 (the resumed attempt's): hard 1 of 4; step 3: 6 + 2 of 16.
    assert by_level["pass_rate"] == [[1.0, 0.75, None], [0.25, 0.25, 0.5]]
    # At most 2 columns: steps 1–2 summed, then step 3.
    assert (merged["steps"], merged["attempts"]) == ([1, 3], [[8, 0], [12, 16]])
    # By the posterior mean now (Beta(5, 1) ≈ 0.83, Beta(3, 3) = 0.5, Beta(1, 5) ≈ 0.17):
    # [0, 0.5) holds hard, [0.5, 1] easy and mid.
    assert by_mean["edges"] == [0.0, 0.5, 1.0]
    assert by_mean["attempts"] == [[4, 4, 8], [8, 4, 8]]


def test_a_bad_heatmap_query_is_a_400_naming_the_field(teams, run, error_of):
    response = teams.client(teams.viewer).get(f"/api/runs/{run.pk}/prompts/heatmap/", {"by": "length", "buckets": 0})

    assert response.status_code == 400
    assert set(error_of(response)["fields"]) == {"by", "buckets"}
