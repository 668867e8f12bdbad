"""The one-click technique check: a run's GRPO twin (runs.twins), through the REST API and
the run page's button, launched like any run (quotas and admission included)."""

import pytest

from quotas.models import Accelerator, Pool, Quota
from runs.models import Run
from runs.twins import baseline_group_size, twin_spec

pytestmark = pytest.mark.django_db

BASE = {"training": {"steps": 7}, "rollout": {"prompts_per_step": 4, "n": 4, "max_new_tokens": 64}, "seed": 11}


def launched(client, spec: dict, **body) -> dict:
    response = client.post("/api/runs/", {"spec": spec, "team": "ml", **body}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def with_(overrides: dict) -> dict:
    return BASE | {key: BASE.get(key, {}) | value if isinstance(value, dict) else value for key, value in overrides.items()}


# What each technique's twin turns off; the rest of the spec (seed, model, data, budget) stays.
TECHNIQUES = {
    "cures": ({"curriculum": {"strategy": "cures", "chunk_prompts": 8}}, {"curriculum.strategy": ("cures", "uniform")}),
    "dars": ({"curriculum": {"strategy": "dars"}}, {"curriculum.strategy": ("dars", "uniform"), "rollout.strategy": ("dars", "plain")}),
    "april": ({"rollout": {"strategy": "april"}}, {"rollout.strategy": ("april", "plain")}),
    "areal": (
        {"orchestration": {"mode": "async"}, "resources": {"rollout_workers": 1}, "algorithm": {"policy_loss": "decoupled_ppo"}},
        {"orchestration.mode": ("async", "sync"), "resources.rollout_workers": (1, 0)},
    ),
}


def leaf(spec: dict, path: str):
    for key in path.split("."):
        spec = spec[key]
    return spec


@pytest.mark.parametrize("technique", list(TECHNIQUES))
def test_the_twin_turns_the_technique_off_and_keeps_seed_model_data_and_budget(
    technique, teams, enqueued, django_capture_on_commit_callbacks
):
    member = teams.client(teams.member)
    overrides, changes = TECHNIQUES[technique]
    original = launched(member, with_(overrides), name="probe")
    with django_capture_on_commit_callbacks(execute=True):
        response = member.post(f"/api/runs/{original['id']}/twin/", format="json")
    assert response.status_code == 201, response.content
    twin = response.json()
    assert twin["name"] == "probe · GRPO twin" and twin["twin_of"] == original["id"]
    assert twin["techniques"] == [technique]
    assert twin["compare_url"] == f"/runs/compare/?run={original['id']}&run={twin['id']}"
    for path, (before, after) in changes.items():
        assert (leaf(original["spec"], path), leaf(twin["spec"], path)) == (before, after), path
    assert twin["spec"]["algorithm"]["name"] == "grpo" and twin["spec"]["algorithm"]["policy_loss"] == "ppo"
    for path in ("seed", "model", "dataset", "training", "telemetry", "rollout.prompts_per_step", "rollout.n",
                 "rollout.max_new_tokens", "rollout.temperature"):
        assert leaf(twin["spec"], path) == leaf(original["spec"], path), path
    stored = Run.objects.get(pk=twin["id"])
    assert (stored.twin_of_id, stored.team.name, stored.owner) == (original["id"], "ml", teams.member)
    assert twin["id"] in enqueued  # admitted like any launch: the sweep found room and handed it on


def test_a_brorl_twin_spends_the_same_samples_per_step_in_default_sized_groups(teams):
    member = teams.client(teams.member)
    original = launched(member, with_({"rollout": {"prompts_per_step": None, "samples_per_step": 256, "n": 128}}))
    twin = member.post(f"/api/runs/{original['id']}/twin/", format="json").json()
    assert twin["techniques"] == ["brorl"]
    before, after = original["spec"]["rollout"], twin["spec"]["rollout"]
    assert (before["n"], before["prompts_per_step"], before["samples_per_step"]) == (128, 2, 256)
    assert (after["n"], after["prompts_per_step"], after["samples_per_step"]) == (8, 32, 256)
    # A broad n without samples_per_step: the budget is prompts × n samples all the same.
    data, techniques = twin_spec(with_({"rollout": {"prompts_per_step": 3, "n": 130}}), "wide")
    assert techniques == ["brorl"] and (data["rollout"]["samples_per_step"], data["rollout"]["n"]) == (390, 6)


def test_baseline_group_size_is_the_largest_whole_split_up_to_the_default_n():
    assert [baseline_group_size(s) for s in (512, 390, 21, 7, 11, 13)] == [8, 6, 7, 7, None, None]


def test_a_run_without_a_technique_gets_a_400_naming_why(teams, error_of):
    member = teams.client(teams.member)
    original = launched(member, BASE)
    response = member.post(f"/api/runs/{original['id']}/twin/", format="json")
    assert response.status_code == 400
    error = error_of(response)
    assert "none of CurES, DARS, BroRL, APRIL or AReaL" in error["fields"]["spec"][0]
    assert not Run.objects.filter(twin_of_id=original["id"]).exists()


def test_a_viewer_may_not_launch_a_twin_and_another_team_does_not_see_the_run(teams):
    original = launched(teams.client(teams.member), with_(TECHNIQUES["april"][0]))
    assert teams.client(teams.viewer).post(f"/api/runs/{original['id']}/twin/").status_code == 403
    assert teams.client(teams.outsider).post(f"/api/runs/{original['id']}/twin/").status_code == 404
    assert not Run.objects.filter(twin_of_id=original["id"]).exists()


def test_the_twin_meets_the_quotas_of_any_launch_in_the_original_pool(teams, error_of):
    pool = Pool.objects.create(name="h100", accelerator=Accelerator.GPU, gpu_type="H100", capacity=2)
    member = teams.client(teams.member)
    original = launched(member, with_({**TECHNIQUES["april"][0], "resources": {"gpus": 1}}), pool="h100")
    Quota.objects.create(pool=pool, team=teams.team, max_gpus_per_run=0)  # tightened after the launch
    response = member.post(f"/api/runs/{original['id']}/twin/", format="json")
    assert response.status_code == 400 and error_of(response)["code"] == "cannot_fit"
    assert "at most 0 GPUs per run" in error_of(response)["fields"]["resources.gpus"][0]
    assert not Run.objects.filter(twin_of_id=original["id"]).exists()


def test_the_run_page_button_launches_the_twin_and_opens_the_comparison(teams, client):
    original = launched(teams.client(teams.member), with_(TECHNIQUES["dars"][0]), name="hard")
    client.force_login(teams.member)
    page = client.get(f"/runs/{original['id']}/").content.decode()
    assert 'id="run-twin-button"' in page and "DARS off" in page
    response = client.post(f"/runs/{original['id']}/twin/")
    twin = Run.objects.get(twin_of_id=original["id"])
    assert response.status_code == 302 and response["Location"] == f"/runs/compare/?run={original['id']}&run={twin.pk}"
    compare = client.get(response["Location"]).content.decode()
    assert "hard · GRPO twin" in compare and "curriculum.strategy" in compare
    twin_page = client.get(f"/runs/{twin.pk}/").content.decode()
    assert 'id="run-twin-of"' in twin_page and 'id="run-twin-button"' not in twin_page
    # Without a technique the page offers no button, and a post says why on the run's page.
    plain = launched(teams.client(teams.member), BASE)
    assert 'id="run-twin-button"' not in client.get(f"/runs/{plain['id']}/").content.decode()
    refused = client.post(f"/runs/{plain['id']}/twin/", follow=True)
    assert "no GRPO twin" in refused.content.decode() and refused.redirect_chain[-1][0] == f"/runs/{plain['id']}/"
