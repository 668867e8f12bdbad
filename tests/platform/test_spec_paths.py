"""A spec launched through the platform may only name server files the operator allows:
uploaded or registered datasets, the engine's sample data, and model folders under
ROLLYARD_MODEL_ROOTS. Anything else is refused before the engine looks at the path, so
a user can neither read nor probe the server's files."""

from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.models import Membership
from accounts.services import remove_member
from catalog.models import Dataset, RunInputs
from engine.assets import ASSETS_DIR
from engine.spec import SpecError
from runs import attempts, lifecycle
from runs import launch as run_launch
from runs.models import Run, RunStatus

SAMPLE = str(ASSETS_DIR / "datasets" / "gsm8k-style-sample.jsonl")


@pytest.fixture(autouse=True)
def no_extra_roots(settings):
    settings.ROLLYARD_DATASET_ROOTS = []
    settings.ROLLYARD_MODEL_ROOTS = []


def problems_of(user, spec) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as refused:
        run_launch.create_run(user, spec)
    return refused.value.problems


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "/etc/does-not-exist.jsonl", "relative/train.jsonl", f"{ASSETS_DIR}/../../../etc/passwd"],
)
def test_a_dataset_path_outside_the_allowed_folders_is_refused_and_nothing_is_stored(alice, path):
    problems = problems_of(alice, {"dataset": {"path": path}})

    assert [field for field, _ in problems] == ["dataset.path"]
    assert "outside the folders this server allows" in problems[0][1]
    assert Run.objects.count() == 0


def test_a_symlink_inside_a_dataset_root_cannot_lead_out_of_it(alice, settings, tmp_path):
    root = tmp_path / "datasets"
    root.mkdir()
    (root / "escape.jsonl").symlink_to("/etc/passwd")
    settings.ROLLYARD_DATASET_ROOTS = [root]

    assert [field for field, _ in problems_of(alice, {"dataset": {"path": str(root / "escape.jsonl")}})] == ["dataset.path"]


def test_model_folders_need_a_configured_model_root(alice, settings, tmp_path):
    problems = problems_of(alice, {"model": {"path": str(tmp_path), "reference": "/opt/models/other"}})
    assert [field for field, _ in problems] == ["model.path", "model.reference"]
    assert "ROLLYARD_MODEL_ROOTS" in problems[0][1]


def test_the_engine_sample_dataset_and_built_in_models_are_allowed(alice):
    run = run_launch.create_run(alice, {"dataset": {"path": SAMPLE}, "model": {"path": "builtin:arith-tiny"}})
    assert run.spec["dataset"]["path"] == SAMPLE


# --- per team: uploads are named through the catalog ---------------------------------------------


@pytest.fixture
def data_dir(tmp_path, settings):
    settings.ROLLYARD_DATA_DIR = tmp_path / "data"
    return settings.ROLLYARD_DATA_DIR


ROWS = b"".join(b'{"prompt": "%d + 1 =", "answer": "%d"}\n' % (n, n + 1) for n in range(40))


def upload(client, team: str, name: str = "sums") -> Dataset:
    response = client.post(
        "/api/datasets/", {"file": SimpleUploadedFile("sums.jsonl", ROWS), "name": name, "team": team}, format="multipart"
    )
    assert response.status_code == 201, response.json()
    return Dataset.objects.get(pk=response.json()["id"])


def launch(client, spec: dict):
    return client.post("/api/runs/", {"spec": spec, "team": "ml"}, format="json")


NOT_YOURS = 'no dataset of your teams is stored at this path; name an uploaded dataset by {"catalog": "<team>/<name>"}'


@pytest.mark.parametrize("data_dir_in_a_root", [False, True], ids=["own-folder", "inside-a-dataset-root"])
def test_a_raw_path_to_another_teams_upload_is_refused_like_a_missing_one(
    teams, data_dir, settings, error_of, data_dir_in_a_root
):
    if data_dir_in_a_root:  # the operator registered a folder that holds the uploads too
        settings.ROLLYARD_DATASET_ROOTS = [data_dir.parent]
    theirs = upload(teams.client(teams.outsider), "other")
    missing = str(Path(theirs.path).with_name("nothing-here.jsonl"))
    member = teams.client(teams.member)

    for path in (theirs.path, missing):
        response = launch(member, {"dataset": {"path": path}})
        assert response.status_code == 400, path
        assert error_of(response)["fields"] == {"dataset.path": [NOT_YOURS]}
        assert str(data_dir) not in response.content.decode()
    assert not Run.objects.exists()


def test_a_raw_path_to_the_teams_own_upload_runs_and_feeds_its_prompt_history(teams, data_dir):
    ours = upload(teams.client(teams.admin), "ml")

    response = launch(teams.client(teams.member), {"dataset": {"path": ours.path, "eval_size": 4}})

    assert response.status_code == 201, response.json()
    assert RunInputs.objects.get(run_id=response.json()["id"]).dataset == ours


def test_a_file_in_the_staging_folder_is_no_dataset(alice, data_dir):
    staged = data_dir / "tmp" / "0123abcd.upload"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(ROWS)

    assert problems_of(alice, {"dataset": {"path": str(staged)}}) == [("dataset.path", NOT_YOURS)]


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        (
            {"dataset": {"path": "builtin:../../etc/passwd"}},
            "dataset.path",
            "datasets have no built-ins ('builtin:' names a model); a built-in task is set by dataset.name",
        ),
        (
            {"dataset": {"path": "builtin:arith-tiny"}},
            "dataset.path",
            "datasets have no built-ins ('builtin:' names a model); a built-in task is set by dataset.name",
        ),
        (
            {"model": {"path": "builtin:../../etc"}},
            "model.path",
            "unknown built-in model '../../etc'; choose one of: arith-tiny",
        ),
    ],
)
def test_builtin_names_only_the_engines_own_models(alice, spec, field, reason):
    assert problems_of(alice, spec) == [(field, reason)]


def test_refusals_name_the_setting_but_never_the_servers_folders(teams, data_dir, settings, tmp_path, error_of):
    settings.ROLLYARD_DATASET_ROOTS = [tmp_path / "shared-datasets"]
    settings.ROLLYARD_MODEL_ROOTS = [tmp_path / "shared-models"]
    spec = {"dataset": {"path": "/etc/passwd"}, "model": {"path": "/etc", "reference": "/opt/models/x"}}

    response = launch(teams.client(teams.member), spec)

    assert response.status_code == 400
    assert sorted(error_of(response)["fields"]) == ["dataset.path", "model.path", "model.reference"]
    body = response.content.decode()
    assert "ROLLYARD_DATASET_ROOTS" in body and "ROLLYARD_MODEL_ROOTS" in body
    for folder in (data_dir, tmp_path, ASSETS_DIR):
        assert str(folder) not in body, folder


# --- checked again when a worker claims the run -------------------------------------------------


def admitted(user, spec: dict, team=None) -> Run:
    run = run_launch.create_run(user, spec, team=team)
    if Run.objects.get(pk=run.pk).status == RunStatus.QUEUED:
        lifecycle.transition(run.pk, RunStatus.ADMITTED, "admitted by the test")
    return run


def test_a_run_whose_owner_left_the_team_of_its_dataset_fails_at_claim_without_an_attempt(teams, data_dir):
    ours = upload(teams.client(teams.admin), "ml")
    run = admitted(teams.member, {"dataset": {"catalog": "ml/sums", "eval_size": 4}}, team=teams.team)
    # Launched while a member; removed while the run waited in the queue.
    remove_member(Membership.objects.get(user=teams.member, team=teams.team))

    with pytest.raises(lifecycle.IllegalTransition):
        attempts.claim_run(run.pk, "host-a", 1111)

    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.status_reason == f"refused when a worker claimed it: invalid run spec: dataset.path: {NOT_YOURS}"
    assert ours.path not in run.status_reason
    assert not run.attempts.exists()


def test_a_run_whose_root_was_withdrawn_fails_at_claim_and_an_allowed_one_is_claimed(alice, settings, tmp_path):
    root = tmp_path / "shared"
    root.mkdir()
    (root / "train.jsonl").write_bytes(ROWS)
    settings.ROLLYARD_DATASET_ROOTS = [root]
    spec = {"dataset": {"path": str(root / "train.jsonl"), "eval_size": 4}}
    kept, withdrawn = admitted(alice, spec), admitted(alice, spec)

    claim = attempts.claim_run(kept.pk, "host-a", 1111)
    settings.ROLLYARD_DATASET_ROOTS = []  # the operator narrows the roots
    with pytest.raises(lifecycle.IllegalTransition):
        attempts.claim_run(withdrawn.pk, "host-a", 1112)

    assert (claim.run.status, claim.attempt.number) == (RunStatus.RUNNING, 1)
    withdrawn.refresh_from_db()
    assert withdrawn.status == RunStatus.FAILED and "dataset.path: outside the folders" in withdrawn.status_reason
    assert str(root) not in withdrawn.status_reason
