"""Algorithm and curriculum presets: named, versioned, owned by a team, validated by the
engine's schema, and resolved into the spec of a run that references them."""

import pytest
from rest_framework.test import APIClient

from catalog.models import Preset
from engine.algorithms import ALGORITHMS
from engine.sampling import SAMPLERS
from engine.spec import AlgorithmSpec, CurriculumSpec
from runs.models import Run

API = "/api/presets/"
DAPO_LIKE = {"name": "grpo", "clip_eps_high": 0.28, "aggregation": "token-mean"}


@pytest.fixture
def api_member(teams) -> APIClient:
    """A member of team "ml" (conftest's `teams`), who may create presets there."""
    return teams.client(teams.member)


def unset_except(*read: str) -> dict[str, None]:
    """The curriculum fields no strategy of `read` sets: stored unset (None)."""
    shared = {"strategy", "prior_alpha", "prior_beta", *read}
    return {name: None for name in CurriculumSpec.model_fields if name not in shared}


def create(client: APIClient, body: dict, name: str = "wide-clip", kind: str = "algorithm", team: str = "ml"):
    return client.post(API, {"team": team, "kind": kind, "name": name, "body": body}, format="json")


def launch(client: APIClient, spec: dict, team: str = "ml"):
    return client.post("/api/runs/", {"team": team, "spec": spec}, format="json")


def test_a_new_preset_is_version_1_with_the_engines_defaults_filled_in(api_member):
    response = create(api_member, DAPO_LIKE)

    assert response.status_code == 201, response.json()
    preset = response.json()
    assert (preset["reference"], preset["version"], preset["kind"]) == ("ml/wide-clip@1", 1, "algorithm")
    # Every field the engine's schema knows, at grpo's defaults except the two given.
    grpo_defaults = AlgorithmSpec.model_validate({"name": "grpo"}).model_dump(mode="json")
    assert preset["body"] == {**grpo_defaults, "clip_eps_high": 0.28, "aggregation": "token-mean"}
    assert grpo_defaults["clip_eps_high"] != 0.28 and grpo_defaults["aggregation"] != "token-mean"


def test_an_edit_creates_the_next_version_and_leaves_the_earlier_one_unchanged(api_member):
    first = create(api_member, DAPO_LIKE).json()

    response = api_member.post(f"{API}{first['id']}/versions/", {"body": {**DAPO_LIKE, "clip_eps_high": 0.3}}, format="json")

    assert response.status_code == 201, response.json()
    assert (response.json()["version"], response.json()["body"]["clip_eps_high"]) == (2, 0.3)
    assert Preset.objects.get(pk=first["id"]).body["clip_eps_high"] == 0.28
    versions = api_member.get(f"{API}{first['id']}/versions/").json()["results"]
    assert [version["version"] for version in versions] == [2, 1]


def test_a_taken_name_is_a_conflict(api_member):
    create(api_member, DAPO_LIKE)

    response = create(api_member, DAPO_LIKE)

    assert response.status_code == 409
    assert "new version" in response.json()["error"]["message"]


def test_a_body_the_engine_refuses_is_a_400_naming_each_field(api_member):
    response = create(api_member, {"clip_eps_low": -1, "aggregation": "mean-ish", "clip": 0.2})

    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert set(fields) == {"body.clip_eps_low", "body.aggregation", "body.clip"}
    assert Preset.objects.count() == 0


def test_an_unknown_algorithm_is_refused_naming_the_choices(api_member):
    response = create(api_member, {"name": "ppo-of-my-dreams"})

    assert response.status_code == 400
    assert "grpo" in " ".join(sum(response.json()["error"]["fields"].values(), []))


def test_a_curriculum_preset_is_validated_by_the_engines_curriculum_section(api_member):
    response = create(api_member, {"strategy": "easy_to_hard", "ramp_steps": 40}, name="slow-ramp", kind="curriculum")

    assert response.status_code == 201, response.json()
    preset = response.json()
    assert (preset["reference"], preset["kind"]) == ("ml/slow-ramp@1", "curriculum")
    # The strategy's other parameter is filled in with its default, and so is the prior.
    assert preset["body"] == {
        "strategy": "easy_to_hard", "start_quantile": 0.3, "ramp_steps": 40, "prior_alpha": 1.0, "prior_beta": 1.0
    } | unset_except("start_quantile", "ramp_steps")


def test_a_curriculum_body_the_engine_refuses_is_a_400_naming_each_field(api_member):
    unknown = create(api_member, {"strategy": "gvm"}, kind="curriculum")
    out_of_range = create(
        api_member, {"strategy": "easy_to_hard", "start_quantile": 0, "ramp_steps": 0}, kind="curriculum"
    )
    bad_cures = create(api_member, {"strategy": "cures", "weight_scale": -1, "pre_rollouts": 0}, kind="curriculum")
    bad_dars = create(api_member, {"strategy": "dars", "schedule": "steep"}, kind="curriculum")

    assert unknown.status_code == 400
    assert unknown.json()["error"]["fields"] == {
        "body.strategy": ["unknown curriculum strategy 'gvm'; choose one of: cures, dars, easy_to_hard, uniform"]
    }
    assert out_of_range.status_code == 400
    assert set(out_of_range.json()["error"]["fields"]) == {"body.start_quantile", "body.ramp_steps"}
    assert bad_cures.status_code == 400
    assert set(bad_cures.json()["error"]["fields"]) == {"body.weight_scale", "body.pre_rollouts"}
    assert (bad_dars.status_code, set(bad_dars.json()["error"]["fields"])) == (400, {"body.schedule"})
    assert Preset.objects.count() == 0


def test_a_run_referencing_a_curriculum_preset_stores_the_resolved_section_and_the_version(api_member):
    first = create(api_member, {"strategy": "easy_to_hard"}, name="pacing", kind="curriculum").json()
    second = api_member.post(
        f"{API}{first['id']}/versions/", {"body": {"strategy": "easy_to_hard", "start_quantile": 0.5}}, format="json"
    )
    assert (second.status_code, second.json()["version"]) == (201, 2)

    response = launch(api_member, {"curriculum": {"preset": "ml/pacing", "ramp_steps": 5}, "training": {"steps": 2}})

    assert response.status_code == 201, response.json()
    run = Run.objects.get()
    # The latest version, under the override next to the reference.
    assert run.spec["curriculum"] == {
        "strategy": "easy_to_hard", "start_quantile": 0.5, "ramp_steps": 5, "prior_alpha": 1.0, "prior_beta": 1.0
    } | unset_except("start_quantile", "ramp_steps")
    assert [preset.reference for preset in run.inputs.presets.all()] == ["ml/pacing@2"]


def test_the_algorithm_registry_is_listed_with_its_defaults(api_member):
    body = api_member.get(f"{API}algorithms/").json()

    assert [entry["name"] for entry in body["algorithms"]] == ALGORITHMS.names()
    grpo = next(entry for entry in body["algorithms"] if entry["name"] == "grpo")
    assert grpo["defaults"]["clip_eps_low"] == ALGORITHMS.get("grpo").clip_eps_low
    assert body["preset_kinds"] == ["algorithm", "curriculum"]


def test_the_curriculum_strategies_are_listed_with_their_defaults(api_member):
    body = api_member.get(f"{API}curricula/").json()

    assert [entry["name"] for entry in body["curricula"]] == SAMPLERS.names() == ["cures", "dars", "easy_to_hard", "uniform"]
    strategies = {entry["name"]: entry for entry in body["curricula"]}
    # Every strategy shares the difficulty store's prior (a uniform Beta(1, 1)).
    prior = {"prior_alpha": 1.0, "prior_beta": 1.0}
    assert strategies["uniform"]["defaults"] == {"strategy": "uniform"} | unset_except() | prior
    easy_to_hard = {"strategy": "easy_to_hard", "start_quantile": 0.3, "ramp_steps": 20}
    assert strategies["easy_to_hard"]["defaults"] == easy_to_hard | unset_except(*easy_to_hard) | prior
    cures = {"strategy": "cures", **SAMPLERS.get("cures").parameters}
    assert cures["weight_scale"] == 0.01 and cures["pre_rollouts"] == 4
    assert strategies["cures"]["defaults"] == cures | unset_except(*cures) | prior
    dars = {"strategy": "dars", "schedule": "equal", "schedule_std": False, "upper_threshold": 1.0}
    assert strategies["dars"]["defaults"] == dars | unset_except(*dars) | prior  # max_rollouts unset: 4·n
    assert "difficulty" in strategies["easy_to_hard"]["description"]


def test_a_viewer_may_read_presets_but_not_create_them(api_member, teams):
    preset = create(api_member, DAPO_LIKE).json()
    viewer = teams.client(teams.viewer)

    assert viewer.get(f"{API}{preset['id']}/").status_code == 200
    refused = create(viewer, DAPO_LIKE, name="mine")
    assert refused.status_code == 403
    assert viewer.post(f"{API}{preset['id']}/versions/", {"body": DAPO_LIKE}, format="json").status_code == 403
    assert Preset.objects.count() == 1


def test_another_teams_preset_is_404(api_member, teams):
    preset = create(api_member, DAPO_LIKE).json()
    stranger = teams.client(teams.outsider)

    assert stranger.get(f"{API}{preset['id']}/").status_code == 404
    assert stranger.post(f"{API}{preset['id']}/versions/", {"body": DAPO_LIKE}, format="json").status_code == 404
    assert stranger.get(API).json()["count"] == 0


def test_a_run_referencing_a_preset_stores_its_body_under_the_overrides_and_the_version_used(api_member):
    create(api_member, DAPO_LIKE)
    second = api_member.post(f"{API}{Preset.objects.get().pk}/versions/", {"body": {**DAPO_LIKE, "clip_eps_high": 0.3}}, format="json")
    assert second.status_code == 201

    response = launch(api_member, {"algorithm": {"preset": "ml/wide-clip@1", "kl_coef": 0.01}, "training": {"steps": 2}})

    assert response.status_code == 201, response.json()
    run = Run.objects.get()
    assert run.spec["algorithm"]["clip_eps_high"] == 0.28  # version 1, not the latest
    assert run.spec["algorithm"]["aggregation"] == "token-mean"
    assert run.spec["algorithm"]["kl_coef"] == 0.01  # the override next to the reference
    assert "preset" not in run.spec["algorithm"]
    assert [preset.reference for preset in run.inputs.presets.all()] == ["ml/wide-clip@1"]


def test_a_preset_reference_without_a_version_takes_the_latest(api_member):
    first = create(api_member, DAPO_LIKE).json()
    api_member.post(f"{API}{first['id']}/versions/", {"body": {**DAPO_LIKE, "clip_eps_high": 0.3}}, format="json")

    response = launch(api_member, {"algorithm": {"preset": "wide-clip"}, "training": {"steps": 2}})

    assert response.status_code == 201, response.json()
    assert Run.objects.get().spec["algorithm"]["clip_eps_high"] == 0.3


def test_a_missing_or_foreign_preset_reference_is_a_400_on_the_preset_field(api_member, teams):
    create(api_member, DAPO_LIKE)

    response = launch(teams.client(teams.outsider), {"algorithm": {"preset": "ml/wide-clip@1"}}, team="other")

    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {
        "algorithm.preset": ["no algorithm preset 'ml/wide-clip@1' among your teams' presets"]
    }
    assert Run.objects.count() == 0


# --- pages -------------------------------------------------------------------------------------


def test_the_presets_page_creates_a_preset_and_lists_it(client, teams):
    client.force_login(teams.member)

    form = client.get("/presets/")
    created = client.post("/presets/", {"name": "wide-clip", "team": "ml", "kind": "algorithm", "body": "clip_eps_high: 0.28\n"})

    assert form.status_code == 200
    assert "clip_eps_low" in form.content.decode()  # the body starts at the engine's defaults
    assert created.status_code == 302
    preset = Preset.objects.get()
    assert (preset.reference, preset.body["clip_eps_high"]) == ("ml/wide-clip@1", 0.28)
    assert "ml/wide-clip@1" in client.get("/presets/").content.decode()


def test_saving_a_preset_page_stores_the_next_version_and_lists_field_errors(client, teams, api_member):
    first = create(api_member, DAPO_LIKE).json()
    client.force_login(teams.member)

    refused = client.post(f"/presets/{first['id']}/", {"body": "clip_eps_low: -1\n"})
    saved = client.post(f"/presets/{first['id']}/", {"body": "clip_eps_high: 0.3\n"})

    assert refused.status_code == 400
    assert 'data-field="body.clip_eps_low"' in refused.content.decode()
    assert saved.status_code == 302
    assert list(Preset.objects.order_by("version").values_list("version", "body__clip_eps_high")) == [(1, 0.28), (2, 0.3)]


def test_a_viewer_sees_the_preset_page_but_saving_is_refused(client, teams, api_member):
    first = create(api_member, DAPO_LIKE).json()
    client.force_login(teams.viewer)

    assert client.get(f"/presets/{first['id']}/").status_code == 200
    assert client.post(f"/presets/{first['id']}/", {"body": "clip_eps_high: 0.3\n"}).status_code == 403
    assert Preset.objects.count() == 1


def test_another_teams_preset_page_is_404(client, teams, api_member):
    first = create(api_member, DAPO_LIKE).json()
    client.force_login(teams.outsider)

    assert client.get(f"/presets/{first['id']}/").status_code == 404
