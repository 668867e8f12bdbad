"""A synchronous run's savings estimate (runs.savings), worked by hand, and its endpoint
fed through the normal event path (runs.telemetry.record_events)."""

import pytest

from engine.events import ListSink, Metrics, Span
from engine.orchestration import run as run_engine
from engine.spec import parse_spec
from runs.models import Run, RunEvent
from runs.savings import StepTimes, estimate_savings, step_times

P90, MAX = "rollout/response_length/p90", "rollout/response_length/max"


def span(step, worker, phase, start, end) -> dict:
    return {"kind": "span", "step": step, "worker": worker, "phase": phase, "start": start, "end": end}


SPANS = [
    # Step 1, a rollout worker: it generates 6 s and verifies 1 s while the trainer idles,
    # then the trainer trains 2 s and pushes weights 1 s. The trainer's spans tile 10 s.
    span(1, "rollout-0", "generate", 0, 6), span(1, "rollout-0", "verify", 6, 7), span(1, "rollout-0", "idle", 7, 10),
    span(1, "trainer", "idle", 0, 7), span(1, "trainer", "train", 7, 9), span(1, "trainer", "sync", 9, 10),
    # ...then the rollout worker evaluates 2 s, reported under step 1 but after its timeline
    # closed: no trainer span covers it, and it is left out (the step stays 10 s).
    span(1, "rollout-0", "eval", 10, 12),
    # Step 2, on the trainer alone: generate 4 s, train 4 s, sync 0.5 s, then the trainer
    # evaluates 2 s (left out: 8.5 s).
    span(2, "trainer", "generate", 100, 104), span(2, "trainer", "train", 104, 108), span(2, "trainer", "sync", 108, 108.5),
    span(2, "trainer", "eval", 108.5, 110.5),
    # Step 3 has spans but no lengths yet: not used.
    span(3, "trainer", "generate", 200, 201), span(3, "trainer", "train", 201, 202),
]
LENGTHS = {1: {P90: 50.0, MAX: 200.0}, 2: {P90: 100.0, MAX: 100.0}}


def test_step_times_fold_spans_into_generation_training_and_the_step():
    times = step_times(SPANS)
    assert times[1] == StepTimes(step=1, step_s=10.0, gen_s=7.0, train_s=2.0)
    assert times[2] == StepTimes(step=2, step_s=8.5, gen_s=4.0, train_s=4.0)
    assert times[3] == StepTimes(step=3, step_s=2.0, gen_s=1.0, train_s=1.0)


def test_the_estimate_worked_by_hand():
    estimate = estimate_savings(step_times(SPANS), LENGTHS, share=0.9)
    assert estimate["steps"] == 2
    assert estimate["measured"] == {"step_s": 18.5, "gen_s": 11.0, "train_s": 6.0}
    # APRIL at 90%: step 1's phase ends at p90/max = 50/200 of its 7 s, saving 5.25 s;
    # step 2's p90 is its max, nothing to cut. 5.25 of 18.5 s.
    april = estimate["april"]
    assert april["saved_s"] == pytest.approx(5.25)
    assert april["step_s"] == pytest.approx(13.25)
    assert april["saved_fraction"] == pytest.approx(5.25 / 18.5)
    assert april["speedup"] == pytest.approx(18.5 / 13.25)
    assert april["length_metric"] == P90
    # Async: each step saves min(gen, train): 2 s + 4 s; the phases go (11 + 6) / (7 + 4).
    overlap = estimate["async"]
    assert overlap["saved_s"] == pytest.approx(6.0)
    assert overlap["speedup"] == pytest.approx(18.5 / 12.5)
    assert overlap["phase_speedup"] == pytest.approx(17 / 11)
    assert any("90%" in line and "p90" in line for line in estimate["assumptions"])


def test_no_steps_is_the_empty_state():
    estimate = estimate_savings({}, {}, share=0.5)
    assert estimate["steps"] == 0 and estimate["april"]["saved_fraction"] is None and estimate["async"]["speedup"] is None


@pytest.mark.django_db
def test_the_endpoint_estimates_from_recorded_events(teams, make_run, record, error_of):
    run = make_run(teams.member, "sync", team=teams.team)
    client = teams.client(teams.viewer)
    empty = client.get(f"/api/runs/{run.pk}/savings/").json()
    assert (empty["applies"], empty["steps"]) == (True, 0)
    events = [Span(**{k: v for k, v in s.items() if k != "kind"}) for s in SPANS]
    events += [Metrics(step=step, values=values) for step, values in LENGTHS.items()]
    record(run.pk, events)
    body = client.get(f"/api/runs/{run.pk}/savings/").json()
    assert body["steps"] == 2 and body["april"]["saved_s"] == pytest.approx(5.25)
    assert body["async"]["saved_s"] == pytest.approx(6.0)
    # p99 is not recorded for these steps: nothing to estimate at that share.
    assert client.get(f"/api/runs/{run.pk}/savings/?share=0.99").json()["steps"] == 0
    bad = client.get(f"/api/runs/{run.pk}/savings/?share=0.8")
    assert bad.status_code == 400 and "share" in error_of(bad)["fields"]
    assert teams.client(teams.outsider).get(f"/api/runs/{run.pk}/savings/").status_code == 404


@pytest.mark.django_db
def test_an_async_run_gets_no_estimate_and_an_april_run_no_april_part(teams, make_run):
    client = teams.client(teams.member)
    async_run, april_run = (make_run(teams.member, name, team=teams.team) for name in ("async", "april"))
    Run.objects.filter(pk=async_run.pk).update(spec={"orchestration": {"mode": "async"}})
    Run.objects.filter(pk=april_run.pk).update(spec={"rollout": {"strategy": "april"}})
    body = client.get(f"/api/runs/{async_run.pk}/savings/").json()
    assert body["applies"] is False and "synchronous runs" in body["reason"]
    assert client.get(f"/api/runs/{april_run.pk}/savings/").json()["april"] is None


# --- a real engine run's telemetry -------------------------------------------------------------

# Three steps on two prompts × 6 rollouts of the built-in task, in process, evaluating
# after every step: the evaluations report spans under the steps they follow.
EVALUATING = {
    "dataset": {"eval_size": 2},
    "rollout": {"prompts_per_step": 2, "n": 6, "max_new_tokens": 48},
    "training": {"steps": 3, "eval_every": 1},
    "resources": {"executor": "inprocess", "cpus": 1},
}


@pytest.mark.django_db
def test_a_real_run_evaluating_every_step_gets_an_estimate_that_holds_together(teams, make_run, record):
    sink = ListSink()
    assert run_engine(parse_spec(EVALUATING), sink) == "succeeded"
    run = make_run(teams.member, "sync", team=teams.team)
    record(run.pk, sink.events)
    assert {span.step for span in sink.of_kind("span") if span.phase == "eval"} == {0, 1, 2, 3}

    spans = RunEvent.objects.filter(run=run, kind="span").values_list("payload", flat=True)
    times = step_times(spans)
    timed = {event.step: event.values["timing_s/step"] for event in sink.of_kind("metrics") if "timing_s/step" in event.values}
    assert sorted(timed) == sorted(times) == [1, 2, 3]  # the evaluation before the first step is no step
    for step, t in times.items():
        # The measured step is the step the engine timed, evaluation apart, and its
        # generation and training happened in it, one after the other.
        assert t.step_s == pytest.approx(timed[step], abs=1e-6)
        assert t.gen_s > 0 and t.train_s > 0
        assert t.gen_s + t.train_s <= t.step_s

    body = teams.client(teams.viewer).get(f"/api/runs/{run.pk}/savings/").json()
    measured = body["measured"]
    assert body["steps"] == 3
    assert measured["step_s"] == pytest.approx(sum(timed.values()), abs=1e-5)
    # Overlapping cannot beat the longer of the two phases, nor cutting the tail save
    # more than all of generation.
    assert body["async"]["step_s"] >= max(measured["gen_s"], measured["train_s"])
    assert 0 <= body["april"]["saved_s"] <= measured["gen_s"]
