"""REST endpoints of the catalog: parse the request, call a selector or a service.

Uploads: `POST /api/datasets/` installs a size-capped upload handler before the body is
read, so a file over ROLLYARD_MAX_UPLOAD_BYTES is cut off while it streams (413) and a
request that declares a bigger body is refused before it is read at all.
"""

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Team
from accounts.permissions import find_team
from accounts.services import default_team
from catalog import selectors, services
from catalog.api.serializers import (
    DatasetCreateSerializer,
    DatasetSerializer,
    PresetCreateSerializer,
    PresetSerializer,
    PresetVersionSerializer,
    PromptRecordSerializer,
    PromptRunDifficultySerializer,
    PromptStatSerializer,
)
from catalog.models import Dataset, Preset, PromptRecord
from catalog.uploads import (
    CappedUploadHandler,
    UploadTooLarge,
    check_declared_length,
    format_from_filename,
    install_capped_handler,
)


def catalog_error_response(exc: Exception) -> Response | None:
    """The API's one error body for the catalog's own errors; None for any other."""
    extra: dict[str, Any] = {}
    if isinstance(exc, UploadTooLarge):
        code, http_status = "too_large", status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
        extra["limit_bytes"] = exc.limit
    elif isinstance(exc, services.DatasetRejected):
        code, http_status = "invalid_dataset", status.HTTP_400_BAD_REQUEST
        extra["rows"] = exc.row_errors
        extra["bad_row_count"] = exc.bad_row_count
    elif isinstance(exc, services.CatalogConflict):
        code, http_status = "conflict", status.HTTP_409_CONFLICT
    elif isinstance(exc, services.CatalogError):
        code, http_status = "invalid_request", status.HTTP_400_BAD_REQUEST
    else:
        return None
    message = str(exc)
    if isinstance(exc, services.SomeRowsBad):
        message += " (fix them, or upload again with skip_bad_rows to keep only the good rows)"
    fields = {exc.field: [message]} if isinstance(exc, services.CatalogError) and exc.field else {}
    return Response({"error": {"code": code, "message": message, "fields": fields, **extra}}, status=http_status)


class CatalogErrors:
    """Mixin: the catalog's domain errors become their HTTP answers."""

    def handle_exception(self, exc: Exception) -> Response:
        return catalog_error_response(exc) or super().handle_exception(exc)


def requested_team(user, id_or_name: str | None) -> Team:
    if not id_or_name:
        return default_team(user)
    team = find_team(user, id_or_name)
    if team is None:
        raise ValidationError({"team": [f"no team '{id_or_name}' among yours"]})
    return team


def visible_dataset_or_404(user, dataset_id: int) -> Dataset:
    try:
        return selectors.get_visible_dataset(user, dataset_id)
    except Dataset.DoesNotExist:
        raise NotFound("no such dataset") from None


def visible_preset_or_404(user, preset_id: int) -> Preset:
    try:
        return selectors.get_visible_preset(user, preset_id)
    except Preset.DoesNotExist:
        raise NotFound("no such preset") from None


# --- datasets --------------------------------------------------------------------------------


class DatasetListView(CatalogErrors, generics.ListAPIView):
    """Datasets of the user's teams (`?team=` narrows to one). POST uploads a file
    (multipart: `file`, `name`, optional `team`, `format`, `columns` as JSON,
    `answer_format`, `skip_bad_rows`) or registers a server `path`."""

    serializer_class = DatasetSerializer
    parser_classes = [MultiPartParser, FormParser, JSONParser]

    def initialize_request(self, request, *args, **kwargs):
        # Before DRF (or a CSRF check) reads the body: the capped handler must see it first.
        self.upload_handler: CappedUploadHandler | None = None
        if request.method == "POST":
            self.upload_handler = install_capped_handler(request)
        return super().initialize_request(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[Dataset]:
        datasets = selectors.visible_datasets(self.request.user)
        if team := self.request.query_params.get("team"):
            datasets = datasets.filter(team__name=team)
        return datasets

    @extend_schema(request={"multipart/form-data": DatasetCreateSerializer}, responses={201: DatasetSerializer})
    def post(self, request: Request) -> Response:
        try:
            check_declared_length(request)
            body = DatasetCreateSerializer(data=request.data)
            if self.upload_handler.too_large:
                raise UploadTooLarge(self.upload_handler.limit)
            body.is_valid(raise_exception=True)
            data = body.validated_data
            team = requested_team(request.user, data.get("team"))
            common = {"description": data["description"], "skip_bad_rows": data["skip_bad_rows"]}
            if "path" in data:
                options = services.load_options(data.get("format"), data.get("columns"), data["answer_format"])
                dataset = services.register_dataset(request.user, team, data["name"], data["path"], options, **common)
            else:
                upload = data["file"]
                fmt = data.get("format") or format_from_filename(upload.name)
                if fmt is None:
                    raise services.CatalogError(
                        f"cannot tell the format of {upload.name!r}: name it .jsonl, .csv or .parquet, or send format"
                    )
                options = services.load_options(fmt, data.get("columns"), data["answer_format"])
                dataset = services.upload_dataset(
                    request.user, team, data["name"], upload.staged_path, upload.name, options, **common
                )
        finally:
            # Whatever went wrong before the service took the file, the staged copy goes.
            self.upload_handler.discard()
        return Response(DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)


class DatasetDetailView(generics.RetrieveAPIView):
    serializer_class = DatasetSerializer

    def get_object(self) -> Dataset:
        return visible_dataset_or_404(self.request.user, self.kwargs["dataset_id"])


class DatasetRecordsView(generics.ListAPIView):
    """The dataset's rows in file order (`?split=` to pick one), each with its pass rate
    over every run that used it: the preview and the per-prompt view."""

    serializer_class = PromptRecordSerializer
    queryset = PromptRecord.objects.none()  # for the schema only; requests use get_queryset

    def get_queryset(self) -> QuerySet[PromptRecord]:
        dataset = visible_dataset_or_404(self.request.user, self.kwargs["dataset_id"])
        return selectors.records_with_stats(dataset, self.request.query_params.get("split"))


class PromptHistoryView(APIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, dataset_id: int, record_id: int) -> Response:
        """One prompt with its difficulty history: attempts and successes per run and step,
        and each run's posterior of its pass rate (latest first)."""
        dataset = visible_dataset_or_404(request.user, dataset_id)
        try:
            record = selectors.get_record(dataset, record_id)
        except PromptRecord.DoesNotExist:
            raise NotFound("no such prompt in this dataset") from None
        history = selectors.prompt_history(request.user, record)
        difficulty = selectors.prompt_difficulties(request.user, record)
        return Response(
            {
                "record": PromptRecordSerializer(record).data,
                "history": PromptStatSerializer(history, many=True).data,
                "difficulty": PromptRunDifficultySerializer(difficulty, many=True).data,
            }
        )


# --- presets ------------------------------------------------------------------------------------


class PresetListView(CatalogErrors, generics.ListAPIView):
    """Presets of the user's teams, every version (`?kind=`, `?team=`, `?name=` narrow).
    POST creates version 1 of a new preset; its body is validated by the engine's schema."""

    serializer_class = PresetSerializer

    def get_queryset(self) -> QuerySet[Preset]:
        presets = selectors.visible_presets(self.request.user)
        for param in ("kind", "name"):
            if value := self.request.query_params.get(param):
                presets = presets.filter(**{param: value})
        if team := self.request.query_params.get("team"):
            presets = presets.filter(team__name=team)
        return presets

    @extend_schema(request=PresetCreateSerializer, responses={201: PresetSerializer})
    def post(self, request: Request) -> Response:
        body = PresetCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        team = requested_team(request.user, data.get("team"))
        preset = services.create_preset(request.user, team, data["kind"], data["name"], data["body"], data["description"])
        return Response(PresetSerializer(preset).data, status=status.HTTP_201_CREATED)


class PresetDetailView(generics.RetrieveAPIView):
    serializer_class = PresetSerializer

    def get_object(self) -> Preset:
        return visible_preset_or_404(self.request.user, self.kwargs["preset_id"])


class PresetVersionsView(CatalogErrors, generics.ListAPIView):
    """Every version of this preset's name, newest first. POST saves an edited body as
    the next version (earlier versions never change)."""

    serializer_class = PresetSerializer
    queryset = Preset.objects.none()  # for the schema only; requests use get_queryset

    def get_queryset(self) -> QuerySet[Preset]:
        return selectors.preset_versions(visible_preset_or_404(self.request.user, self.kwargs["preset_id"]))

    @extend_schema(request=PresetVersionSerializer, responses={201: PresetSerializer})
    def post(self, request: Request, preset_id: int) -> Response:
        preset = visible_preset_or_404(request.user, preset_id)
        body = PresetVersionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        created = services.new_preset_version(request.user, preset, data["body"], data.get("description"))
        return Response(PresetSerializer(created).data, status=status.HTTP_201_CREATED)


class AlgorithmDefaultsView(APIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        """The engine's algorithms with their resolved defaults, and the preset kinds
        this engine can validate."""
        return Response(
            {"algorithms": selectors.algorithm_defaults(), "preset_kinds": services.preset_kinds_supported()}
        )


class CurriculumDefaultsView(APIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        """The engine's curriculum strategies with their resolved defaults, and the preset
        kinds this engine can validate."""
        return Response(
            {"curricula": selectors.curriculum_defaults(), "preset_kinds": services.preset_kinds_supported()}
        )
