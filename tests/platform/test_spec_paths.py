"""A spec launched through the platform may only name server files the operator allows:
uploaded or registered datasets, the engine's sample data, and model folders under
ROLLYARD_MODEL_ROOTS. Anything else is refused before the engine looks at the path, so
a user can neither read nor probe the server's files."""

import pytest

from engine.assets import ASSETS_DIR
from engine.spec import SpecError
from runs import services
from runs.models import Run

SAMPLE = str(ASSETS_DIR / "datasets" / "gsm8k-style-sample.jsonl")


@pytest.fixture(autouse=True)
def no_extra_roots(settings):
    settings.ROLLYARD_DATASET_ROOTS = []
    settings.ROLLYARD_MODEL_ROOTS = []


def problems_of(user, spec) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as refused:
        services.create_run(user, spec)
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
    run = services.create_run(alice, {"dataset": {"path": SAMPLE}, "model": {"path": "builtin:arith-tiny"}})
    assert run.spec["dataset"]["path"] == SAMPLE
