"""User input that used to reach a server error now gets a 400 (or a form message)
naming the field, and stores nothing: path names too long for the file system, a fork
its pool or quota can never admit, numbers the views trusted, NUL characters (which
PostgreSQL cannot store), and more GPUs than the training backend can use (the torch
backend trains on one device; deepspeed, one rank per GPU, takes them)."""

import html
import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from typer.testing import CliRunner

from accounts.services import create_token
from catalog.models import Dataset
from quotas.models import Accelerator, Allocation, Pool, Quota
from rollyard_cli.app import app as cli
from runs import launch as run_launch
from runs.models import Checkpoint, Run, RunStatus

pytestmark = pytest.mark.django_db

# Linux allows 255 bytes per name: 300 is refused by the kernel (ENAMETOOLONG) before any
# file is looked up, the case that escaped as a raw OSError.
LONG_NAME = "a" * 300
ROWS = b"".join(b'{"prompt": "%d + 1 =", "answer": "%d"}\n' % (n, n + 1) for n in range(40))


@pytest.fixture
def roots(tmp_path, settings) -> dict[str, Path]:
    folders = {name: tmp_path / name for name in ("data", "datasets", "models")}
    for folder in folders.values():
        folder.mkdir()
    settings.ROLLYARD_DATA_DIR = folders["data"]
    settings.ROLLYARD_DATASET_ROOTS = [folders["datasets"]]
    settings.ROLLYARD_MODEL_ROOTS = [folders["models"]]
    return folders


def assert_no_server_folder_in(response, roots: dict[str, Path]) -> None:
    body = response.content.decode()
    for folder in roots.values():
        assert str(folder) not in body, (folder, body)


def page_text(response) -> str:
    return html.unescape(response.content.decode())


def launch(client, spec: dict, **body):
    return client.post("/api/runs/", {"spec": spec, **body}, format="json")


# --- names too long for the file system ---------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "field", "root"),
    [("dataset", "path", "datasets"), ("model", "path", "models"), ("model", "reference", "models")],
)
def test_a_path_with_a_name_too_long_inside_an_allowed_root_is_a_400_naming_the_field(
    teams, roots, error_of, section, field, root
):
    path = str(roots[root] / f"{LONG_NAME}.jsonl")

    response = launch(teams.client(teams.member), {section: {field: path}})

    assert response.status_code == 400, response.content
    error = error_of(response)
    assert error["code"] == "invalid_spec"
    assert error["fields"] == {
        f"{section}.{field}": ["a name in this path is longer than the file system allows (255 bytes per name)"]
    }
    assert_no_server_folder_in(response, roots)
    assert not Run.objects.exists()


def test_registering_a_path_with_a_name_too_long_is_a_400_naming_the_path(teams, roots, error_of):
    path = str(roots["datasets"] / f"{LONG_NAME}.jsonl")

    response = teams.client(teams.member).post("/api/datasets/", {"name": "long", "path": path}, format="json")

    assert response.status_code == 400, response.content
    assert error_of(response)["fields"] == {
        "path": ["a name in this path is longer than the file system allows (255 bytes per name)"]
    }
    assert not Dataset.objects.exists()


def test_registering_outside_the_roots_names_the_field_but_not_the_roots(teams, roots, error_of):
    response = teams.client(teams.member).post("/api/datasets/", {"name": "pw", "path": "/etc/passwd"}, format="json")

    assert response.status_code == 400
    assert list(error_of(response)["fields"]) == ["path"]
    assert_no_server_folder_in(response, roots)


def test_an_upload_the_loader_cannot_read_is_named_by_its_file_not_its_staging_path(teams, roots, error_of):
    response = teams.client(teams.member).post(
        "/api/datasets/",
        {"file": SimpleUploadedFile("junk.parquet", b"not parquet at all"), "name": "junk"},
        format="multipart",
    )

    assert response.status_code == 400, response.content
    assert "junk.parquet is not a readable Parquet file" in error_of(response)["message"]
    assert ".upload" not in response.content.decode()
    assert_no_server_folder_in(response, roots)


# --- more GPUs than a run can use ------------------------------------------------------------------

MULTI_DEVICE = (
    "the torch training backend uses one device; ask for at most 1 GPU (this run asks for 2), "
    "or set backends.training: deepspeed (one rank per GPU)"
)


@pytest.fixture
def h100() -> Pool:
    return Pool.objects.create(name="h100", accelerator=Accelerator.GPU, gpu_type="H100", capacity=8)


def gpu_spec(gpus: int) -> dict:
    return {"resources": {"gpus": gpus, "executor": "inprocess"}, "training": {"steps": 6}}


def test_a_launch_asking_for_two_gpus_is_refused_by_the_api(teams, h100, error_of):
    response = launch(teams.client(teams.member), gpu_spec(2), pool="h100")

    assert response.status_code == 400
    assert error_of(response)["fields"] == {"resources.gpus": [MULTI_DEVICE]}
    assert not Run.objects.exists() and not Allocation.objects.exists()


def test_one_gpu_is_still_accepted(teams, h100):
    assert launch(teams.client(teams.member), gpu_spec(1), pool="h100").status_code == 201


def test_two_gpus_with_deepspeed_are_accepted_as_two_ranks_and_counted_as_two(teams, h100):
    spec = gpu_spec(2) | {"backends": {"training": "deepspeed", "zero_stage": 2}}

    response = launch(teams.client(teams.member), spec, pool="h100")

    assert response.status_code == 201, response.content
    run = Run.objects.get()
    assert run.spec["backends"]["data_parallel"] == 2  # resolved: one rank per GPU
    allocation = Allocation.objects.get(run=run)
    assert (allocation.gpus, allocation.slots) == (2, 2)  # 2 of the pool's 8 GPUs, in the quota ledger


def test_the_launch_form_refuses_two_gpus_naming_the_field(client, teams, h100):
    client.force_login(teams.member)

    response = client.post("/runs/new/", {"spec": json.dumps(gpu_spec(2)), "pool": "h100"})

    assert response.status_code == 400
    assert f'<li data-field="resources.gpus"><code>resources.gpus</code> — {MULTI_DEVICE}</li>' in page_text(response)
    assert not Run.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_cli_launch_refuses_two_gpus_naming_the_field(live_server, teams, h100, tmp_path):
    spec_file = tmp_path / "two.yaml"
    spec_file.write_text(json.dumps({**gpu_spec(2)}))
    env = {"ROLLYARD_URL": live_server.url, "ROLLYARD_TOKEN": create_token(teams.member, "cli")[1]}

    # The CLI has no pool option: its launch goes to the CPU pool, whose own refusal of
    # any GPU must not hide this one (the spec is checked before the pool).
    result = CliRunner().invoke(cli, ["runs", "launch", str(spec_file)], env=env, catch_exceptions=False)

    assert result.exit_code == 6, result.output  # the CLI's exit code for a 400
    assert f"resources.gpus: {MULTI_DEVICE}" in " ".join(result.output.split())
    assert not Run.objects.exists()


# --- forks the pool or quota refuse --------------------------------------------------------------


@pytest.fixture
def gpu_parent(teams, h100, tmp_path) -> Run:
    """A finished one-GPU run of `ml` on h100 with a checkpoint at step 3."""
    parent = run_launch.create_run(teams.member, gpu_spec(1), pool="h100")
    folder = tmp_path / "ckpt-3"
    folder.mkdir()
    Checkpoint.objects.create(run=parent, step=3, path=str(folder), created_at=timezone.now())
    return Run.objects.get(pk=parent.pk)


def used_up_gpu_hours(teams, h100, make_run) -> None:
    Quota.objects.create(pool=h100, team=teams.team, gpu_hours_per_period=10, period_days=1)
    earlier = make_run(teams.member, status=RunStatus.SUCCEEDED, team=teams.team)
    now = timezone.now()
    # 4 GPUs for 3 hours, ended an hour ago: 12 GPU-hours in the last day, 10 allowed.
    Allocation.objects.create(
        run=earlier, team=teams.team, user=teams.member, pool=h100, gpus=4, slots=4,
        admitted_at=now - timedelta(hours=4), released_at=now - timedelta(hours=1),
    )  # fmt: skip


def deactivate(h100) -> None:
    h100.active = False
    h100.save()


@pytest.mark.parametrize(
    ("refuse", "message"),
    [
        (lambda teams, h100, make_run: deactivate(h100), "pool: inactive pool 'h100'; pools open to launches: cpu"),
        (used_up_gpu_hours, "pool: GPU-hours of team ml on h100 in the last 1 day used: 12.0/10"),
    ],
    ids=["inactive-pool", "gpu-hours-used-up"],
)
def test_the_fork_form_shows_the_pools_refusal_and_forks_nothing(client, teams, h100, make_run, gpu_parent, refuse, message):
    refuse(teams, h100, make_run)
    client.force_login(teams.member)
    runs_before = Run.objects.count()

    response = client.post(f"/runs/{gpu_parent.pk}/fork/", {"step": "3", "overrides": ""}, follow=True)

    assert response.status_code == 200
    assert response.redirect_chain == [(f"/runs/{gpu_parent.pk}/", 302)]
    assert f"not forked: {message}" in page_text(response)
    assert Run.objects.count() == runs_before


def test_the_fork_api_answers_the_same_refusal_as_cannot_fit(teams, h100, gpu_parent, error_of):
    deactivate(h100)

    response = teams.client(teams.member).post(f"/api/runs/{gpu_parent.pk}/fork/", {"step": 3}, format="json")

    assert response.status_code == 400
    error = error_of(response)
    assert (error["code"], error["fields"]) == ("cannot_fit", {"pool": ["inactive pool 'h100'; pools open to launches: cpu"]})


def test_a_fork_asking_for_two_gpus_is_refused(client, teams, gpu_parent):
    client.force_login(teams.member)

    response = client.post(f"/runs/{gpu_parent.pk}/fork/", {"step": "3", "overrides": "resources: {gpus: 2}"}, follow=True)

    assert f"not forked: resources.gpus: {MULTI_DEVICE}" in page_text(response)
    assert not Run.objects.filter(parent=gpu_parent).exists()


# --- numbers the views trusted ---------------------------------------------------------------------

# '²' (superscript two) is a digit to str.isdigit() but not to int(); 19 nines pass
# a 64-bit id.
NOT_IDS = ["²", "9" * 19, "-1", "1e3"]


@pytest.mark.parametrize("value", NOT_IDS)
def test_the_clone_form_answers_404_for_an_id_that_is_no_number(client, alice, value):
    client.force_login(alice)
    assert client.get("/runs/new/", {"from": value}).status_code == 404


@pytest.mark.parametrize("value", NOT_IDS)
def test_the_diff_page_answers_400_for_an_id_that_is_no_number(client, alice, make_run, value):
    client.force_login(alice)
    run = make_run(alice)
    assert client.get("/runs/diff/", {"a": value, "b": run.pk}).status_code == 400


@pytest.mark.parametrize("value", NOT_IDS)
def test_the_fork_form_says_no_checkpoint_for_a_step_that_is_no_number(client, alice, make_run, value):
    client.force_login(alice)
    run = make_run(alice)

    response = client.post(f"/runs/{run.pk}/fork/", {"step": value}, follow=True)

    assert response.status_code == 200
    assert f"run #{run.pk} has no checkpoint at step -1" in page_text(response)


@pytest.mark.parametrize("version", NOT_IDS)
def test_a_preset_version_that_is_no_number_reads_like_a_missing_preset(teams, error_of, version):
    response = launch(teams.client(teams.member), {"algorithm": {"preset": f"ml/wide@{version}"}})

    assert response.status_code == 400
    assert error_of(response)["fields"] == {"algorithm.preset": [f"no algorithm preset 'ml/wide@{version}' among your teams' presets"]}


# --- NUL characters, which PostgreSQL cannot store -------------------------------------------------

NUL_REASON = "must not contain a NUL character"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"spec": {"name": "a\u0000b"}}, "name"),
        ({"spec": {"dataset": {"catalog": "ml/x\u0000"}}}, "dataset.catalog"),  # looked up before the engine sees it
        ({"spec": {"algorithm": {"preset": "x\u0000"}}}, "algorithm.preset"),
        ({"spec": {}, "retention": {"metric": "a\u0000"}}, "retention.metric"),
    ],
)
def test_a_nul_in_a_launch_is_a_400_naming_the_field(teams, error_of, body, field):
    response = teams.client(teams.member).post("/api/runs/", body, format="json")

    assert response.status_code == 400
    assert error_of(response)["fields"] == {field: [NUL_REASON]}
    assert not Run.objects.exists()


def test_a_nul_in_a_query_parameter_is_a_400_naming_it(teams, roots, error_of):
    client = teams.client(teams.member)
    dataset_id = client.post(
        "/api/datasets/", {"file": SimpleUploadedFile("s.jsonl", ROWS), "name": "s"}, format="multipart"
    ).json()["id"]

    for url, field in (
        ("/api/datasets/?team=a%00b", "team"),
        ("/api/presets/?kind=algorithm&name=x%00", "name"),
        (f"/api/datasets/{dataset_id}/records/?split=test%00", "split"),
    ):
        response = client.get(url)
        assert response.status_code == 400, url
        assert error_of(response)["fields"] == {field: [NUL_REASON]}, url


def test_the_pages_forms_refuse_a_nul_naming_the_field(client, teams, roots):
    client.force_login(teams.member)

    # YAML's "\0" escape is a NUL only once parsed: the service catches it, not the edge.
    escaped = client.post("/runs/new/", {"spec": 'name: "a\\0b"'})
    raw = client.post("/runs/new/", {"spec": "training: {steps: 2}", "team": "ml\x00"})
    preset = client.post("/presets/", {"kind": "algorithm", "name": "p", "body": 'name: "a\\0"'})
    upload = client.post("/datasets/", {"file": SimpleUploadedFile("s.jsonl", ROWS), "name": "s", "description": "a\x00"})

    assert [r.status_code for r in (escaped, raw, preset, upload)] == [400, 400, 400, 400]
    assert f'<li data-field="name"><code>name</code> — {NUL_REASON}</li>' in page_text(escaped)
    assert raw.content.decode() == f"team: {NUL_REASON}"
    assert f'<li data-field="body.name"><code>body.name</code> — {NUL_REASON}</li>' in page_text(preset)
    assert f"description: {NUL_REASON}" in page_text(upload)
    assert not Run.objects.exists() and not Dataset.objects.exists()


def test_a_team_or_user_named_by_a_digit_int_refuses_reads_like_a_missing_one(teams, error_of):
    launched = launch(teams.client(teams.member), {"training": {"steps": 2}}, team="²")
    added = teams.client(teams.admin).post(f"/api/teams/{teams.team.pk}/members/", {"user": "²"}, format="json")

    assert launched.status_code == 400 and error_of(launched)["fields"] == {"team": ["no team '²' among yours"]}
    assert added.status_code == 400 and error_of(added)["fields"] == {"user": ["no active user '²'"]}
