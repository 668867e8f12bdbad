"""The dashboards' server side: the run page's tabs and optional panels, the launch form's
live validation, the runs list's filters and search, and the comparison of runs."""

import json
import re

import pytest
from django.test import Client

from runs.models import Run, RunStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser_alice(client: Client, alice) -> Client:
    client.force_login(alice)
    return client


def page_config(page: str, element_id: str) -> dict:
    match = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', page, re.S)
    assert match, f"no {element_id}"
    return json.loads(match.group(1))


def test_the_run_page_has_every_tab_and_the_charts_of_each(browser_alice, alice, make_run):
    run = make_run(alice, "tabs", status=RunStatus.RUNNING)

    page = browser_alice.get(f"/runs/{run.id}/").content.decode()

    for tab in ("overview", "learning", "rollout", "accelerators", "difficulty", "off-policy", "techniques"):
        assert f'data-tab="{tab}"' in page and f'data-panel="{tab}"' in page
    for chart in ("chart-reward", "chart-passk", "chart-loss", "chart-entropy", "chart-kl", "chart-clip",
                  "chart-grad-norm", "chart-length", "chart-ratios", "chart-heatmap", "chart-histogram",
                  "chart-timeline", "chart-idle", "chart-pass-heatmap", "chart-prompts", "chart-staleness"):
        assert f'id="{chart}" data-points="0"' in page, chart
        assert f'data-chart="{chart}"' in page  # its CSV / JSON export
    assert 'id="prompt-table"' in page and 'id="samples"' in page and 'id="run-status-history"' in page
    config = page_config(page, "run-config")
    assert config["line_charts"]["chart-length"]["names"][2] == "rollout/response_length/p99"
    assert config["prompts_url"] == f"/api/runs/{run.id}/prompts/"


def test_the_tail_ratio_has_its_own_axis_beside_the_fractions_of_rollouts(browser_alice, alice, make_run):
    run = make_run(alice, "tail", status=RunStatus.RUNNING)

    charts = page_config(browser_alice.get(f"/runs/{run.id}/").content.decode(), "run-config")["line_charts"]

    # max / p50 runs 4-13×; the clipped, aborted and partial shares 0-0.12: one axis would
    # flatten the shares to a line at zero.
    assert charts["chart-ratios"]["names"] == ["rollout/clip_ratio", "rollout/aborted_ratio", "rollout/partial_ratio"]
    assert charts["chart-ratios"]["unit"] == "fraction of rollouts"
    assert charts["chart-tail-ratio"]["names"] == ["rollout/tail_ratio"]
    assert charts["chart-tail-ratio"]["unit"] == "× the median length"


def test_every_chart_draws_lines_of_one_unit():
    from runs.views import LINE_CHARTS

    # A unit like "groups / samples / tokens" or "as reported" is a chart mixing scales.
    mixed = {chart_id: chart["unit"] for tab in LINE_CHARTS.values() for chart_id, chart in tab.items()
             if " / " in chart["unit"] or chart["unit"] == "as reported"}
    assert mixed == {}


def test_off_policy_and_technique_panels_show_only_when_their_metrics_exist(browser_alice, alice, make_run):
    plain = make_run(alice, "plain", status=RunStatus.RUNNING)
    # The run's summary lists every metric name it reported (what the page reads).
    staled = make_run(alice, "async", status=RunStatus.RUNNING,
                      summary={"off_policy/staleness/mean": 0.5, "cures/rollouts_per_prompt/mean": 3.0})

    plain_page = browser_alice.get(f"/runs/{plain.id}/").content.decode()
    staled_page = browser_alice.get(f"/runs/{staled.id}/").content.decode()

    assert 'id="chart-staleness-card" hidden' in plain_page and 'id="chart-cures-card" hidden' in plain_page
    assert 'id="chart-staleness-card" hidden' not in staled_page
    assert 'id="chart-cures-card" hidden' not in staled_page
    # The "cures/rollouts_per_prompt/*" chart's raw link names the metric the run has.
    assert "name=cures%2Frollouts_per_prompt%2Fmean" in staled_page
    assert 'id="chart-buffer-card" hidden' in staled_page  # no buffer metrics in either


def test_a_queued_run_shows_its_place_and_why_it_waits(browser_alice, alice):
    from runs.launch import create_run

    run = create_run(alice, {"training": {"steps": 2}})

    page = browser_alice.get(f"/runs/{run.id}/").content.decode()

    assert re.search(r'id="run-queue" class="queue-note">\s*Waiting in pool <code>cpu</code>: position 1\s+\(0 ahead\) — fits now', page)


@pytest.fixture
def api(alice):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(alice)
    return client


def test_validate_answers_the_resolved_spec_of_a_good_one_and_stores_nothing(api):
    answer = api.post("/api/spec/validate/", {"spec": {"training": {"steps": 3}}}, format="json")

    assert answer.status_code == 200
    body = answer.json()
    assert body["valid"] is True and body["problems"] == {}
    assert body["resolved"]["training"]["steps"] == 3 and body["resolved"]["rollout"]["n"] == 8  # a default
    assert Run.objects.count() == 0


def test_validate_names_each_bad_field(api):
    # n = 1: a group of one has no advantage (the schema's minimum is 2); steps = 0 is below 1.
    answer = api.post("/api/spec/validate/", {"spec": {"rollout": {"n": 1}, "training": {"steps": 0}}}, format="json")

    body = answer.json()
    assert answer.status_code == 200 and body["valid"] is False and body["resolved"] is None
    assert set(body["problems"]) == {"rollout.n", "training.steps"}
    assert Run.objects.count() == 0


def test_validate_reads_yaml_and_answers_text_that_holds_no_spec_as_a_validation(api):
    good = api.post("/api/spec/validate/", {"text": "rollout:\n  n: 4\n"}, format="json").json()
    # The flow sequence opened at column 10 never closes: the text ends at column 15.
    bad_yaml = api.post("/api/spec/validate/", {"text": "rollout: [n: 4"}, format="json")
    not_mapping = api.post("/api/spec/validate/", {"spec": [1, 2]}, format="json")

    assert good["spec"] == {"rollout": {"n": 4}} and good["valid"] is True
    # Half-typed YAML is what the live form sends between keystrokes: an answer, not a
    # failed request, with the place in the user's own text.
    assert bad_yaml.status_code == not_mapping.status_code == 200
    assert bad_yaml.json() | {"problems": None} == {"valid": False, "problems": None, "spec": None, "resolved": None}
    assert bad_yaml.json()["problems"] == {"text": [
        "line 1, column 15: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence that began at line 1, column 10)"
    ]}
    assert not_mapping.json()["valid"] is False
    assert not_mapping.json()["problems"] == {"spec": ["must be a mapping of spec settings, got list"]}


def test_validate_names_the_line_and_column_of_a_bad_character(api):
    # A control character (BEL), the second character of line 2.
    body = api.post("/api/spec/validate/", {"text": "seed: 1\nx\x07"}, format="json").json()

    assert body["valid"] is False
    assert body["problems"] == {"text": ["line 2, column 2: character U+0007: special characters are not allowed"]}


def test_validate_names_a_pool_that_does_not_exist(api):
    body = api.post("/api/spec/validate/", {"spec": {}, "pool": "nowhere"}, format="json").json()
    assert body["valid"] is False and "pool" in body["problems"]


def test_the_launch_form_carries_the_schema_and_registries(browser_alice):
    page = browser_alice.get("/runs/new/").content.decode()

    config = page_config(page, "launch-config")
    assert "RolloutSpec" in config["schema"]["$defs"]
    assert {"grpo", "dapo"} <= {choice["name"] for choice in config["choices"]["algorithm"]}
    assert config["validate_url"] == "/api/spec/validate/"
    assert 'id="launch-pools"' in page and "free" in page


@pytest.fixture
def spec_run(make_run):
    """A run stored directly with the given spec (make_run stores {"name": ...})."""

    def make(owner, name: str, spec: dict, **fields) -> Run:
        run = make_run(owner, name, **fields)
        Run.objects.filter(pk=run.pk).update(spec=spec)
        run.refresh_from_db()
        return run

    return make


def runs_listed(page: str) -> set[int]:
    return {int(n) for n in re.findall(r'<tr data-run-id="(\d+)"', page)}


def test_the_list_filters_by_algorithm_technique_status_and_search(browser_alice, alice, spec_run):
    grpo = spec_run(alice, "plain grpo", spec={"algorithm": {"name": "grpo"}, "rollout": {"strategy": "plain"}})
    april = spec_run(alice, "april dapo", status=RunStatus.RUNNING,
                     spec={"algorithm": {"name": "dapo"}, "rollout": {"strategy": "april"}})
    cures = spec_run(alice, "cures", spec={"algorithm": {"name": "grpo"}, "curriculum": {"strategy": "cures"},
                                           "rollout": {"samples_per_step": None}})
    brorl = spec_run(alice, "broad", spec={"algorithm": {"name": "rloo"}, "rollout": {"samples_per_step": 512}})

    def listed(query: str) -> set[int]:
        return runs_listed(browser_alice.get(f"/runs/?{query}").content.decode())

    assert listed("algorithm=grpo") == {grpo.id, cures.id}
    assert listed("technique=april") == {april.id}
    assert listed("technique=cures") == {cures.id}
    assert listed("technique=brorl") == {brorl.id}  # samples_per_step set; null or absent is not
    assert listed("status=running") == {april.id}
    assert listed("q=DAPO") == {april.id}
    assert listed(f"q=%23{grpo.id}") == {grpo.id}
    assert listed("") == {grpo.id, april.id, cures.id, brorl.id}


def test_a_bad_filter_is_a_400_naming_it(browser_alice):
    response = browser_alice.get("/runs/?technique=nonsense")
    assert response.status_code == 400
    assert 'data-field="technique"' in response.content.decode()


def test_compare_shows_only_the_keys_that_differ(browser_alice, alice, spec_run):
    base = {"algorithm": {"name": "grpo"}, "training": {"lr": 0.001, "steps": 5}, "seed": 0}
    a = spec_run(alice, "a", spec=base, summary={"reward/mean": 0.5})
    b = spec_run(alice, "b", spec={**base, "training": {"lr": 0.002, "steps": 5}})
    c = spec_run(alice, "c", spec={**base, "seed": 1})

    page = browser_alice.get(f"/runs/compare/?run={a.id}&run={b.id}&run={c.id}").content.decode()

    # a/b differ in training.lr, a/c in seed; algorithm.name and training.steps agree everywhere.
    assert re.findall(r'<tr data-path="([^"]+)"', page) == ["seed", "training.lr"]
    config = page_config(page, "compare-config")
    assert [run["id"] for run in config["runs"]] == [a.id, b.id, c.id]
    assert config["names"] == ["reward/mean"] and config["default"] == "reward/mean"


def test_compare_needs_two_to_ten_visible_runs(browser_alice, alice, bob, make_run):
    mine = make_run(alice, "mine")
    theirs = make_run(bob, "theirs")

    assert browser_alice.get(f"/runs/compare/?run={mine.id}").status_code == 400
    assert browser_alice.get("/runs/compare/?" + "&".join(f"run={n}" for n in range(1, 12))).status_code == 400
    assert browser_alice.get(f"/runs/compare/?run={mine.id}&run=x").status_code == 400
    assert browser_alice.get(f"/runs/compare/?run={mine.id}&run={theirs.id}").status_code == 404


def test_clone_and_edit_opens_the_form_with_that_runs_spec(browser_alice, alice, spec_run):
    source = spec_run(alice, "source", spec={"training": {"steps": 7}, "rollout": {"n": 4}})

    page = browser_alice.get(f"/runs/new/?from={source.id}").content.decode()

    config = page_config(page, "launch-config")
    # Not fresh: the form starts from the editor's text, the source's spec.
    assert config["fresh"] is False
    assert "steps: 7" in page and f'name="from" value="{source.id}"' in page
    assert page_config(browser_alice.get("/runs/new/").content.decode(), "launch-config")["fresh"] is True


def test_the_launch_and_fork_forms_name_the_line_and_column_of_bad_yaml(browser_alice, alice):
    from runs.launch import create_run

    launch_page = browser_alice.post("/runs/new/", {"spec": "training: {steps: 3"}).content.decode()
    parent = create_run(alice, {"training": {"steps": 5}})
    fork_page = browser_alice.post(f"/runs/{parent.pk}/fork/", {"step": "1", "overrides": "a: b: c"}, follow=True)

    # "training: {steps: 3" ends at column 20 with its mapping still open.
    assert "line 1, column 20: expected &#x27;,&#x27; or &#x27;}&#x27;" in launch_page
    assert "line 1, column 5: mapping values are not allowed here" in fork_page.content.decode()
    assert "unicode string" not in launch_page + fork_page.content.decode()
    assert Run.objects.count() == 1
