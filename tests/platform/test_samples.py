"""Sample records for drill-down: the engine's `samples` events, recorded through
record_events as a driver sends them, read from GET /api/runs/<id>/samples/ (?step=,
?prompt_id=, ?split=) and /api/runs/<id>/prompts/<prompt_id>/samples/; a re-sent batch
is stored once, a step reported again by a resumed attempt replaces its set, only the
newest ROLLYARD_SAMPLE_STEPS_KEPT steps stay. Last, a real engine run's events end to end."""

import re

import pytest
from django.utils import timezone

from engine.events import Heartbeat, ListSink, PromptText, SampleRecord, SampleRecords
from engine.orchestration import run as run_engine
from engine.spec import parse_spec
from runs import telemetry
from runs.models import AttemptOutcome, RunAttempt, RunEvent, RunSample, RunStatus


def sample(prompt_id: str, reward: float, text: str = "", **fields) -> SampleRecord:
    values = {"length": 5, "status": "completed", "first_version": 0, "last_version": 0} | fields
    return SampleRecord(prompt_id=prompt_id, response=text or f"{prompt_id} → {reward}", reward=reward, **values)


@pytest.fixture
def run(teams, make_run):
    return make_run(teams.member, status=RunStatus.RUNNING, team=teams.team)


def results(response) -> list[dict]:
    assert response.status_code == 200, response.json()
    return response.json()["results"]


def test_from_a_step_to_a_prompt_to_its_samples(teams, run, record):
    record(
        run.pk,
        [
            SampleRecords(
                step=1, samples=[sample("a", 1.0), sample("a", 0.0), sample("b", 0.0, status="truncated", length=64)]
            ),
            SampleRecords(step=1, split="test", samples=[sample("t", 1.0)]),
        ],
    )
    record(run.pk, [SampleRecords(step=2, samples=[sample("a", 1.0, first_version=1, last_version=2)])])
    api = teams.client(teams.viewer)
    base = f"/api/runs/{run.pk}"

    step_one = results(api.get(f"{base}/samples/", {"step": 1}))
    step_one_train_a = results(api.get(f"{base}/samples/", {"step": 1, "split": "train", "prompt_id": "a"}))
    everything = api.get(f"{base}/samples/").json()
    prompt_a = results(api.get(f"{base}/prompts/a/samples/"))
    prompt_a_at_1 = results(api.get(f"{base}/prompts/a/samples/", {"step": 1}))

    # Step 1: the test split's sample, then the train ones in the order the engine sent them.
    assert [(s["split"], s["prompt_id"], s["reward"]) for s in step_one] == [
        ("test", "t", 1.0), ("train", "a", 1.0), ("train", "a", 0.0), ("train", "b", 0.0),
    ]  # fmt: skip
    assert (step_one[3]["status"], step_one[3]["length"]) == ("truncated", 64)
    assert [s["response"] for s in step_one_train_a] == ["a → 1.0", "a → 0.0"]
    assert everything["count"] == 5
    assert everything["results"][0]["step"] == 2  # newest step first
    # A prompt's samples, newest step first: step 2's, sampled by versions 1 to 2, then step 1's.
    assert [(s["step"], s["first_version"], s["last_version"]) for s in prompt_a] == [(2, 1, 2), (1, 0, 0), (1, 0, 0)]
    assert [s["reward"] for s in prompt_a_at_1] == [1.0, 0.0]
    assert not RunEvent.objects.filter(run=run, kind="samples").exists()


def test_a_resent_batch_is_stored_once(run):
    attempt = RunAttempt.objects.create(run=run, number=1, worker_host="test", worker_pid=1)
    first = [SampleRecords(step=1, samples=[sample("a", 1.0), sample("a", 0.0)])]
    second = [SampleRecords(step=2, samples=[sample("a", 0.0)])]

    telemetry.record_events(run.pk, attempt.pk, first, batch=1)
    telemetry.record_events(run.pk, attempt.pk, first, batch=1)  # the reply was lost: sent again
    telemetry.record_events(run.pk, attempt.pk, second, batch=2)
    telemetry.record_events(run.pk, attempt.pk, first, batch=1)  # a late duplicate of batch 1

    assert sorted(RunSample.objects.filter(run=run).values_list("step", "reward")) == [(1, 0.0), (1, 1.0), (2, 0.0)]


def test_a_step_reported_again_by_a_resumed_attempt_replaces_its_samples(teams, run, record):
    record(run.pk, [SampleRecords(step=1, samples=[sample("a", 1.0)])])
    record(run.pk, [SampleRecords(step=2, samples=[sample("a", 1.0, text="lost"), sample("b", 0.0, text="lost")])])
    # The worker is lost after step 2, whose checkpoint was never written; attempt 2
    # resumes from step 1 and samples step 2 again.
    RunAttempt.objects.filter(run=run).update(ended_at=timezone.now(), outcome=AttemptOutcome.LOST)
    record(run.pk, [SampleRecords(step=2, samples=[sample("a", 0.0, text="resumed")])])

    step_two = results(teams.client(teams.viewer).get(f"/api/runs/{run.pk}/samples/", {"step": 2}))

    assert [(s["prompt_id"], s["response"]) for s in step_two] == [("a", "resumed")]
    assert RunSample.objects.filter(run=run, step=1).count() == 1  # step 1 untouched


def test_only_the_newest_steps_samples_are_kept(run, record, settings):
    settings.ROLLYARD_SAMPLE_STEPS_KEPT = 3

    for step in range(1, 6):
        record(run.pk, [SampleRecords(step=step, samples=[sample("a", 1.0), sample("b", 0.0)])])

    # After step 5, steps above 5 − 3 = 2 stay: 3, 4, 5, two samples each.
    kept = RunSample.objects.filter(run=run)
    assert sorted(set(kept.values_list("step", flat=True))) == [3, 4, 5]
    assert kept.count() == 6


def test_odd_prompt_ids_and_text_are_stored_and_found(teams, run, record):
    record(run.pk, [SampleRecords(step=1, samples=[sample("set/7 ü", 1.0, text="4\x00 #### 4")])])
    api = teams.client(teams.viewer)

    by_path = results(api.get(f"/api/runs/{run.pk}/prompts/set/7%20%C3%BC/samples/"))
    by_query = results(api.get(f"/api/runs/{run.pk}/samples/", {"prompt_id": "set/7 ü"}))

    # PostgreSQL's text cannot hold NUL: it is stored as the replacement character.
    assert [s["response"] for s in by_path] == [s["response"] for s in by_query] == ["4\ufffd #### 4"]


def test_bad_query_parameters_are_400s_naming_them_and_other_teams_get_404(teams, run, error_of):
    api = teams.client(teams.viewer)

    half_step = api.get(f"/api/runs/{run.pk}/samples/", {"step": "1.5"})
    bad_split = api.get(f"/api/runs/{run.pk}/prompts/a/samples/", {"split": "val"})

    assert half_step.status_code == bad_split.status_code == 400
    assert list(error_of(half_step)["fields"]) == ["step"]
    assert list(error_of(bad_split)["fields"]) == ["split"]
    stranger = teams.client(teams.outsider)
    for url in (f"/api/runs/{run.pk}/samples/", f"/api/runs/{run.pk}/prompts/a/samples/"):
        assert stranger.get(url).status_code == 404, url


# --- a real engine run, end to end ------------------------------------------------------------

# Two steps on two prompts × 6 rollouts of the built-in task, in process: seconds.
TINY = {
    "dataset": {"eval_size": 2},
    "rollout": {"prompts_per_step": 2, "n": 6, "max_new_tokens": 48},
    "training": {"steps": 2, "eval_every": 0},
    "resources": {"executor": "inprocess", "cpus": 1},
}


@pytest.fixture(scope="module")
def tiny_run() -> ListSink:
    """The events of one real engine run of TINY (run once for the module's tests)."""
    sink = ListSink()
    assert run_engine(parse_spec(TINY), sink) == "succeeded"
    return sink


def record_as_a_worker(run, events) -> None:
    """Send `events` as the worker's sink sends them: one numbered batch per heartbeat."""
    attempt = RunAttempt.objects.create(run=run, number=1, worker_host="test", worker_pid=1)
    batch: list = []
    number = 0
    for event in events:
        batch.append(event)
        if isinstance(event, Heartbeat):
            number += 1
            telemetry.record_events(run.pk, attempt.pk, batch, batch=number)
            batch = []
    telemetry.record_events(run.pk, attempt.pk, batch, batch=number + 1)


def test_a_real_runs_difficulty_and_samples_are_stored_as_the_engine_reported_them(teams, run, tiny_run):
    sink = tiny_run
    record_as_a_worker(run, sink.events)
    api = teams.client(teams.viewer)

    prompts = {row["prompt_id"]: row for row in results(api.get(f"/api/runs/{run.pk}/prompts/", {"limit": 500}))}
    # Cross-check against the other record of the same rollouts: each step's prompt_results.
    attempts: dict[str, int] = {}
    successes: dict[str, int] = {}
    for event in sink.of_kind("prompt_results"):
        for result in event.results if event.split == "train" else []:
            attempts[result.prompt_id] = attempts.get(result.prompt_id, 0) + result.attempts
            successes[result.prompt_id] = successes.get(result.prompt_id, 0) + result.successes
    assert set(prompts) == set(attempts)
    for prompt_id, row in prompts.items():
        # Uniform prior: Beta(1 + successes, 1 + failures).
        assert (row["attempts"], row["successes"]) == (attempts[prompt_id], successes[prompt_id])
        assert (row["alpha"], row["beta"]) == (1 + successes[prompt_id], 1 + attempts[prompt_id] - successes[prompt_id])
        assert row["low"] <= row["mean"] <= row["high"]

    # Every train step's samples: at most 4 per prompt (the default samples_per_prompt),
    # one right and one wrong where the prompt had both at that step.
    for event in sink.of_kind("prompt_results"):
        if event.split != "train":
            continue
        for result in event.results:
            url = f"/api/runs/{run.pk}/prompts/{result.prompt_id}/samples/"
            stored = results(api.get(url, {"step": event.step, "split": "train"}))
            assert len(stored) == min(4, result.attempts)
            if 0 < result.successes < result.attempts:
                assert {s["reward"] > 0 for s in stored} == {True, False}
            # Step k's tokens come from policy version k − 1 (one optimiser step a step here).
            assert {(s["first_version"], s["last_version"]) for s in stored} == {(event.step - 1, event.step - 1)}
    assert RunSample.objects.filter(run=run, split="train").count() == sum(
        len(event.samples) for event in sink.of_kind("samples") if event.split == "train"
    )


def test_a_nul_in_a_prompt_id_is_a_400_not_a_database_error(teams, run, error_of):
    api = teams.client(teams.viewer)

    in_path = api.get(f"/api/runs/{run.pk}/prompts/a%00b/samples/")
    in_query = api.get(f"/api/runs/{run.pk}/samples/", {"prompt_id": "a\x00b"})

    assert in_path.status_code == in_query.status_code == 400
    assert list(error_of(in_path)["fields"]) == list(error_of(in_query)["fields"]) == ["prompt_id"]


def test_a_real_runs_prompt_text_and_answer_come_with_its_samples(teams, run, tiny_run):
    record_as_a_worker(run, tiny_run.events)
    api = teams.client(teams.viewer)
    # Train and held-out prompts (the run evaluates once at its end).
    prompt_ids = {sample.prompt_id for event in tiny_run.of_kind("samples") for sample in event.samples}

    for prompt_id in prompt_ids:
        stored = results(api.get(f"/api/runs/{run.pk}/prompts/{prompt_id}/samples/"))
        (row,) = results(api.get(f"/api/runs/{run.pk}/samples/", {"prompt_id": prompt_id, "limit": 1}))
        assert stored and {(s["prompt"], s["answer"]) for s in stored} == {(row["prompt"], row["answer"])}
        # An arith prompt is its chain right-aligned with "." words ("… . 7 +5 -3 +8"): the
        # chain read as Python is the reference answer (7 + 5 − 3 + 8 = 17).
        chain = " ".join(word for word in row["prompt"].split() if word != ".")
        assert row["answer"] == str(eval(chain)), row  # noqa: S307 - a chain of digits and signs
        # The arith verifier gives 1.0 exactly to a response whose last "#### n" is the answer.
        for sample in stored:
            marked = re.findall(r"#### *(-?\d+)", sample["response"])
            assert (sample["reward"] == 1.0) == (marked[-1:] == [row["answer"]]), sample
    # The difficulty table (train prompts) carries them too.
    table = results(api.get(f"/api/runs/{run.pk}/prompts/", {"limit": 500}))
    train_ids = {sample.prompt_id for event in tiny_run.of_kind("samples") if event.split == "train" for sample in event.samples}
    assert {row["prompt_id"] for row in table if row["prompt"] is not None} == train_ids
    # Each prompt is stored once, however many steps and samples it had.
    assert run.prompts.count() == len(prompt_ids)
    stranger = teams.client(teams.outsider)
    some_prompt = next(iter(prompt_ids))
    for url in (f"/api/runs/{run.pk}/prompts/{some_prompt}/samples/", f"/api/runs/{run.pk}/samples/", f"/api/runs/{run.pk}/prompts/"):
        assert stranger.get(url).status_code == 404, url


def test_a_prompt_is_stored_once_and_a_run_that_reported_no_text_answers_null(teams, run, record):
    first = PromptText(prompt_id="a", prompt="2 +3", answer="5")
    record(run.pk, [SampleRecords(step=1, samples=[sample("a", 1.0), sample("b", 0.0)], prompts=[first])])
    # A later step reports prompt "a" again: its first text stays (an id names its text).
    record(run.pk, [SampleRecords(step=2, samples=[sample("a", 0.0)], prompts=[first.model_copy(update={"prompt": "x"})])])

    stored = results(teams.client(teams.viewer).get(f"/api/runs/{run.pk}/samples/"))

    assert [(s["step"], s["prompt_id"], s["prompt"], s["answer"]) for s in stored] == [
        (2, "a", "2 +3", "5"), (1, "a", "2 +3", "5"), (1, "b", None, None),
    ]  # fmt: skip
