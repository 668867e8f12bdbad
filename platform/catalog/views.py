"""Server-rendered pages: the datasets list with its upload form, a dataset's page
(metadata, split counts, skipped rows, a preview of its rows with each prompt's pass rate),
one prompt's difficulty history, and the presets (list with a create form; a version's
page with a form that saves the next version). Like the API they call selectors and
services."""

import yaml
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from accounts.models import Role, Team
from accounts.permissions import find_team, teams_of
from accounts.services import default_team
from catalog import selectors, services
from catalog.models import Dataset, Preset, PresetKind, PromptRecord
from catalog.uploads import FORMAT_SUFFIXES, UploadTooLarge, check_declared_length, format_from_filename, install_capped_handler
from engine.data import ANSWER_FORMATS
from engine.spec import SpecError
from rollyard.params import NUL, NUL_REASON
from rollyard.spec_text import load_spec_text
from rollyard.text import count

RECORDS_PER_PAGE = 50


def _visible_dataset_or_404(request: HttpRequest, dataset_id: int) -> Dataset:
    try:
        return selectors.get_visible_dataset(request.user, dataset_id)
    except Dataset.DoesNotExist:
        raise Http404("no such dataset") from None


# csrf_exempt outside, csrf_protect inside: the CSRF check reads the form, and the capped
# upload handler has to be in place before anything reads it (Django's documented order).
@csrf_exempt
@login_required
def dataset_list(request: HttpRequest) -> HttpResponse:
    handler = install_capped_handler(request) if request.method == "POST" else None
    try:
        return _dataset_list(request, handler)
    finally:
        if handler is not None:
            handler.discard()


@csrf_protect
def _dataset_list(request: HttpRequest, handler) -> HttpResponse:
    problems: list[str] = []
    row_errors: list[dict] = []
    bad_row_count = 0
    if request.method == "POST":
        try:
            dataset = _upload_from_form(request, handler)
        except (services.CatalogError, UploadTooLarge) as exc:
            # The page names its own control, not the API's skip_bad_rows parameter.
            remedy = " (fix them, or tick “keep the good rows” and upload again)"
            problems.append(f"{exc}{remedy}" if isinstance(exc, services.SomeRowsBad) else str(exc))
            if isinstance(exc, services.DatasetRejected):
                row_errors, bad_row_count = exc.row_errors, exc.bad_row_count
        else:
            messages.info(request, f"stored {count(dataset.row_count, 'row')} as {dataset.reference}")
            return redirect("catalog:dataset-detail", dataset_id=dataset.pk)
    context = {
        "datasets": selectors.visible_datasets(request.user),
        "teams": teams_of(request.user, Role.MEMBER),
        "formats": list(FORMAT_SUFFIXES),
        "answer_formats": ANSWER_FORMATS,
        "problems": problems,
        "row_errors": row_errors,
        "bad_row_count": bad_row_count,
        "form": request.POST if request.method == "POST" else {},
    }
    return render(request, "catalog/dataset_list.html", context, status=400 if problems else 200)


def _team_from_form(request: HttpRequest) -> Team:
    """The form's team among the user's (their default team when the form names none)."""
    name = request.POST.get("team", "").strip()
    if not name:
        return default_team(request.user)
    team = find_team(request.user, name)
    if team is None:
        raise services.CatalogError(f"no team '{name}' among yours")
    return team


def _upload_from_form(request: HttpRequest, handler) -> Dataset:
    check_declared_length(request)
    form, upload = request.POST, request.FILES.get("file")
    if handler.too_large:
        raise UploadTooLarge(handler.limit)
    if upload is None:
        raise services.CatalogError("choose a file to upload")
    # A multipart form is not checked at the edge (rollyard.middleware): its fields are here.
    if unstorable := sorted(key for key, value in form.items() if NUL in key or NUL in value):
        raise services.CatalogError(f"{', '.join(unstorable)}: {NUL_REASON}", unstorable[0])
    team = _team_from_form(request)
    fmt = form.get("format") or format_from_filename(upload.name)
    if fmt is None:
        raise services.CatalogError(f"cannot tell the format of {upload.name!r}: name it .jsonl, .csv or .parquet")
    columns = {role: form.get(f"column_{role}", "").strip() for role in services.COLUMN_ROLES}
    options = services.load_options(fmt, columns, form.get("answer_format") or "plain")
    return services.upload_dataset(
        request.user, team, form.get("name", ""), upload.staged_path, upload.name, options,
        description=form.get("description", ""), skip_bad_rows=form.get("skip_bad_rows") == "on",
    )  # fmt: skip


@login_required
def dataset_detail(request: HttpRequest, dataset_id: int) -> HttpResponse:
    dataset = _visible_dataset_or_404(request, dataset_id)
    split = request.GET.get("split") or None
    page = Paginator(selectors.records_with_stats(dataset, split), RECORDS_PER_PAGE).get_page(request.GET.get("page"))
    context = {"dataset": dataset, "page": page, "split": split}
    return render(request, "catalog/dataset_detail.html", context)


@login_required
def prompt_detail(request: HttpRequest, dataset_id: int, record_id: int) -> HttpResponse:
    dataset = _visible_dataset_or_404(request, dataset_id)
    try:
        record = selectors.get_record(dataset, record_id)
    except PromptRecord.DoesNotExist:
        raise Http404("no such prompt in this dataset") from None
    context = {"dataset": dataset, "record": record, "history": selectors.prompt_history(request.user, record)}
    return render(request, "catalog/prompt_detail.html", context)


# --- presets ------------------------------------------------------------------------------------


def _visible_preset_or_404(request: HttpRequest, preset_id: int) -> Preset:
    try:
        return selectors.get_visible_preset(request.user, preset_id)
    except Preset.DoesNotExist:
        raise Http404("no such preset") from None


def _to_yaml(body: dict) -> str:
    return yaml.safe_dump(body, sort_keys=False, default_flow_style=False)


@login_required
def preset_list(request: HttpRequest) -> HttpResponse:
    """Every preset version of the user's teams, and a form for a new preset (its body
    starts as the engine's defaults for the first algorithm)."""
    problems: list[tuple[str, str]] = []
    form = request.POST if request.method == "POST" else {}
    if request.method == "POST":
        try:
            team = _team_from_form(request)
            preset = services.create_preset(
                request.user, team, form.get("kind", ""), form.get("name", ""),
                load_spec_text(form.get("body", ""), "body"), form.get("description", ""),
            )  # fmt: skip
        except SpecError as exc:
            problems = exc.problems
        except services.CatalogError as exc:
            problems = [("preset", str(exc))]
        else:
            return redirect("catalog:preset-detail", preset_id=preset.pk)
    context = {
        "presets": selectors.visible_presets(request.user),
        "teams": teams_of(request.user, Role.MEMBER),
        "kinds": PresetKind.values,
        "body_text": form.get("body") or _to_yaml(selectors.algorithm_defaults()[0]["defaults"]),
        "form": form,
        "problems": problems,
    }
    return render(request, "catalog/preset_list.html", context, status=400 if problems else 200)


@login_required
def preset_detail(request: HttpRequest, preset_id: int) -> HttpResponse:
    """One version, its siblings, and a form that saves an edited body as the next version."""
    preset = _visible_preset_or_404(request, preset_id)
    problems: list[tuple[str, str]] = []
    body_text = _to_yaml(preset.body)
    if request.method == "POST":
        body_text = request.POST.get("body", "")
        try:
            created = services.new_preset_version(
                request.user, preset, load_spec_text(body_text, "body"), request.POST.get("description")
            )
        except SpecError as exc:
            problems = exc.problems
        except services.CatalogError as exc:
            problems = [("preset", str(exc))]
        else:
            messages.info(request, f"saved {created.reference}")
            return redirect("catalog:preset-detail", preset_id=created.pk)
    context = {
        "preset": preset,
        "versions": selectors.preset_versions(preset),
        "body_text": body_text,
        "problems": problems,
    }
    return render(request, "catalog/preset_detail.html", context, status=400 if problems else 200)
