"""Dataset uploads through the REST API: good files in every format, and every way a file
can be bad or hostile. Whatever goes wrong, nothing is half-stored: no Dataset or
PromptRecord row, no file under the data dir (staging folder included)."""

import io
import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from asgiref.testing import ApplicationCommunicator
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from catalog import services
from catalog.models import Dataset, PromptRecord
from catalog.uploads import safe_filename

API = "/api/datasets/"


@pytest.fixture
def data_dir(tmp_path, settings) -> Path:
    settings.ROLLYARD_DATA_DIR = tmp_path / "data"
    return settings.ROLLYARD_DATA_DIR


@pytest.fixture
def uploader(teams) -> APIClient:
    """A member of team "ml" (conftest's `teams`), who may upload there."""
    return teams.client(teams.member)


def jsonl(*rows) -> bytes:
    return b"".join((row if isinstance(row, bytes) else json.dumps(row).encode()) + b"\n" for row in rows)


def upload(client: APIClient, filename: str, content: bytes, **fields):
    body = {"file": SimpleUploadedFile(filename, content), "name": "maths", "team": "ml", **fields}
    return client.post(API, body, format="multipart")


def stored_files(data_dir: Path) -> list[Path]:
    return sorted(path for path in data_dir.rglob("*") if path.is_file()) if data_dir.exists() else []


def assert_nothing_stored(data_dir: Path) -> None:
    assert Dataset.objects.count() == 0
    assert PromptRecord.objects.count() == 0
    assert stored_files(data_dir) == []


GOOD_ROWS = [
    {"prompt": "2 + 3 =", "answer": "5"},
    {"prompt": "7 - 4 =", "answer": "3"},
    {"prompt": "6 + 6 =", "answer": "12"},
]


# --- good files ----------------------------------------------------------------------------


def test_a_jsonl_upload_stores_the_file_and_one_record_per_row(uploader, data_dir):
    content = jsonl(*GOOD_ROWS)

    response = upload(uploader, "arith.jsonl", content)

    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["reference"], body["format"], body["row_count"]) == ("ml/maths", "jsonl", 3)
    assert body["size_bytes"] == len(content)
    dataset = Dataset.objects.get()
    [stored] = stored_files(data_dir)
    assert stored == Path(dataset.path) and stored.read_bytes() == content
    assert stored.parent.parent == data_dir / "datasets" and stored.name == "arith.jsonl"
    assert list(dataset.records.values_list("prompt", "answer")) == [(r["prompt"], r["answer"]) for r in GOOD_ROWS]


def test_a_csv_upload_with_mapped_columns_and_splits(uploader, data_dir):
    content = b"question,solution,part\n2 + 3 =,5,train\n7 - 4 =,3,test\n6 + 6 =,12,train\n"
    columns = {"prompt": "question", "answer": "solution", "split": "part"}

    response = upload(uploader, "arith.csv", content, columns=json.dumps(columns))

    assert response.status_code == 201, response.json()
    assert response.json()["split_counts"] == {"train": 2, "test": 1}
    assert response.json()["columns"] == columns


def test_a_parquet_upload(uploader, data_dir):
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(GOOD_ROWS), buffer)

    response = upload(uploader, "arith.parquet", buffer.getvalue())

    assert response.status_code == 201, response.json()
    assert response.json()["row_count"] == 3


# --- bad rows -------------------------------------------------------------------------------


def test_malformed_rows_are_each_reported_with_their_line_and_nothing_is_stored(uploader, data_dir):
    content = jsonl(GOOD_ROWS[0], b"{not json", GOOD_ROWS[1], {"prompt": "no answer"}, GOOD_ROWS[2])

    response = upload(uploader, "arith.jsonl", content)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_dataset"
    assert error["bad_row_count"] == 2
    assert [(row["line"], row["unit"]) for row in error["rows"]] == [(2, "line"), (4, "line")]
    assert error["rows"][0]["reason"].startswith("invalid JSON")
    assert error["rows"][1]["reason"] == "no answer (no column 'answer')"
    assert error["message"] == (
        "2 of 5 rows are invalid; nothing was stored (fix them, or upload again with skip_bad_rows to keep only "
        "the good rows)"
    )
    assert_nothing_stored(data_dir)


def test_skip_bad_rows_keeps_the_good_ones_and_records_the_skipped(uploader, data_dir):
    content = jsonl(GOOD_ROWS[0], b"{not json", GOOD_ROWS[1])

    response = upload(uploader, "arith.jsonl", content, skip_bad_rows="true")

    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["row_count"], body["skipped_row_count"]) == (2, 1)
    assert body["skipped_rows"][0]["line"] == 2


def test_an_id_column_naming_two_rows_alike_is_refused(uploader, data_dir):
    content = b"id,prompt,answer\nq1,2 + 3 =,5\nq2,7 - 4 =,3\nq1,6 + 6 =,12\n"

    response = upload(uploader, "arith.csv", content, columns=json.dumps({"id": "id"}))

    assert response.status_code == 400
    assert response.json()["error"]["rows"] == [
        {"line": 4, "unit": "line", "reason": "duplicate id 'q1' (first on line 2)"}
    ]
    assert_nothing_stored(data_dir)


def test_a_one_row_file_is_refused_since_no_run_could_hold_out_a_test_prompt(uploader, data_dir):
    response = upload(uploader, "one.jsonl", jsonl(GOOD_ROWS[0]))

    assert response.status_code == 400
    assert "one usable row cannot be both a train and a test split" in response.json()["error"]["message"]
    assert_nothing_stored(data_dir)


def test_an_all_bad_file_is_refused_even_when_skipping_bad_rows(uploader, data_dir):
    response = upload(uploader, "arith.jsonl", jsonl(b"[1, 2]", b"nope"), skip_bad_rows="true")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_dataset"
    assert_nothing_stored(data_dir)


def test_an_empty_file_is_refused(uploader, data_dir):
    response = upload(uploader, "empty.jsonl", b"")

    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"file": ["The submitted file is empty."]}
    assert_nothing_stored(data_dir)


def test_a_file_of_blank_lines_is_refused(uploader, data_dir):
    response = upload(uploader, "blank.jsonl", b"\n \n\n")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_dataset"
    assert_nothing_stored(data_dir)


def test_a_file_in_the_wrong_encoding_is_refused(uploader, data_dir):
    content = jsonl(*GOOD_ROWS).decode().encode("utf-16")

    response = upload(uploader, "arith.jsonl", content)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_dataset"
    assert "not UTF-8" in error["rows"][0]["reason"]
    assert_nothing_stored(data_dir)


def test_a_huge_single_line_is_reported_without_echoing_it(uploader, data_dir):
    huge = b'{"prompt": "' + b"x" * 3_000_000  # 3 MB, never closed

    response = upload(uploader, "arith.jsonl", huge)

    assert response.status_code == 400
    error = response.json()["error"]
    assert len(response.content) < 10_000  # the 3 MB line is not sent back
    assert error["rows"] == [{"line": 1, "unit": "line", "reason": "line longer than 1048576 bytes"}]
    assert_nothing_stored(data_dir)


@pytest.mark.parametrize("filename", ["junk.jsonl", "junk.csv", "junk.parquet"])
def test_binary_junk_is_refused(uploader, data_dir, filename):
    junk = bytes(range(256)) * 40 + b"\x00\xff" * 500

    response = upload(uploader, filename, junk)

    assert response.status_code == 400
    assert_nothing_stored(data_dir)


def test_a_file_whose_format_cannot_be_told_is_refused(uploader, data_dir):
    response = upload(uploader, "arith.txt", jsonl(*GOOD_ROWS))

    assert response.status_code == 400
    assert "cannot tell the format" in response.json()["error"]["message"]
    assert_nothing_stored(data_dir)


# --- sizes ----------------------------------------------------------------------------------


def test_a_file_over_the_limit_is_cut_off_while_streaming_with_413(uploader, data_dir, settings):
    # 5 000 bytes declared is within limit + multipart overhead (1 000 + 65 536), so the
    # request is read, and the upload handler stops it after the first 1 000 bytes.
    settings.ROLLYARD_MAX_UPLOAD_BYTES = 1000
    content = jsonl(*([GOOD_ROWS[0]] * 200))
    assert len(content) > 5000

    response = upload(uploader, "arith.jsonl", content)

    assert response.status_code == 413
    error = response.json()["error"]
    assert (error["code"], error["limit_bytes"]) == ("too_large", 1000)
    assert "1000 bytes" in error["message"]
    assert_nothing_stored(data_dir)


def test_a_request_declaring_more_than_the_limit_is_refused_before_it_is_read(uploader, data_dir, settings):
    settings.ROLLYARD_MAX_UPLOAD_BYTES = 1000
    content = b"x" * 100_000  # more than 1 000 + 65 536

    response = upload(uploader, "arith.jsonl", content)

    assert response.status_code == 413
    assert_nothing_stored(data_dir)


# --- hostile names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_name", "stored_name"),
    [
        ("../../evil.jsonl", "evil.jsonl"),
        ("/etc/cron.d/evil.jsonl", "evil.jsonl"),
        ("..\\..\\evil.jsonl", "evil.jsonl"),
        ("\uff0e\uff0e\uff0fevil.jsonl", "evil.jsonl"),  # fullwidth "../", NFKC-normalised
        ("ev\u202eil.jsonl", "evil.jsonl"),  # a right-to-left override is dropped
        ("...jsonl", "jsonl.jsonl"),
        ("a\x00b.jsonl", "ab.jsonl"),
    ],
)
def test_a_hostile_filename_never_leaves_the_dataset_folder(uploader, data_dir, client_name, stored_name):
    response = upload(uploader, client_name, jsonl(*GOOD_ROWS))

    assert response.status_code == 201, response.json()
    stored = Path(Dataset.objects.get().path)
    assert stored.name == stored_name
    assert stored.resolve().parent.parent == (data_dir / "datasets").resolve()
    assert stored_files(data_dir) == [stored]


def test_safe_filename_keeps_a_name_made_only_of_safe_characters():
    assert safe_filename("a\x00b.jsonl") == "ab.jsonl"
    assert safe_filename("my data (v2).csv") == "my_data_v2_.csv"
    assert safe_filename("../..") == "data"
    assert safe_filename("") == "data"


# --- all or nothing ----------------------------------------------------------------------------


def test_a_failure_midway_leaves_no_rows_and_no_files(teams, data_dir):
    # The rows are written, then the move into datasets/ fails: a file stands where the
    # datasets folder should be. The transaction rolls back and the staged file goes.
    data_dir.mkdir(parents=True)
    (data_dir / "datasets").write_text("in the way")
    staged = data_dir / "tmp" / "upload.part"
    staged.parent.mkdir()
    staged.write_bytes(jsonl(*GOOD_ROWS))
    options = services.load_options("jsonl", None, "plain")

    with pytest.raises(OSError):
        services.upload_dataset(teams.member, teams.team, "maths", staged, "arith.jsonl", options)

    assert Dataset.objects.count() == 0 and PromptRecord.objects.count() == 0
    assert stored_files(data_dir) == [data_dir / "datasets"]


# --- who may upload ----------------------------------------------------------------------------


def test_a_viewer_may_not_upload(teams, data_dir):
    response = upload(teams.client(teams.viewer), "arith.jsonl", jsonl(*GOOD_ROWS))

    assert response.status_code == 403
    assert "member role" in response.json()["error"]["message"]
    assert_nothing_stored(data_dir)


def test_uploading_into_another_team_reads_like_a_missing_team(uploader, data_dir):
    response = upload(uploader, "arith.jsonl", jsonl(*GOOD_ROWS), team="other")

    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"team": ["no team 'other' among yours"]}
    assert_nothing_stored(data_dir)


def test_a_second_dataset_of_the_same_name_is_a_conflict(uploader, data_dir):
    assert upload(uploader, "a.jsonl", jsonl(*GOOD_ROWS)).status_code == 201

    response = upload(uploader, "b.jsonl", jsonl(*GOOD_ROWS))

    assert response.status_code == 409
    assert len(stored_files(data_dir)) == 1


def test_an_anonymous_upload_is_refused(data_dir, teams):
    response = upload(APIClient(), "arith.jsonl", jsonl(*GOOD_ROWS))

    assert response.status_code == 401
    assert_nothing_stored(data_dir)


# --- registering server paths --------------------------------------------------------------------


def register(client: APIClient, path: str, **fields):
    return client.post(API, {"name": "shared", "team": "ml", "path": path, **fields}, format="json")


def test_registering_a_path_is_refused_when_no_roots_are_configured(uploader, tmp_path, data_dir):
    file = tmp_path / "shared.jsonl"
    file.write_bytes(jsonl(*GOOD_ROWS))

    response = register(uploader, str(file))

    assert response.status_code == 400
    assert "ROLLYARD_DATASET_ROOTS" in response.json()["error"]["message"]
    assert Dataset.objects.count() == 0


def test_a_path_inside_a_root_is_registered_in_place(uploader, tmp_path, settings, data_dir):
    root = tmp_path / "shared"
    root.mkdir()
    file = root / "arith.jsonl"
    file.write_bytes(jsonl(*GOOD_ROWS))
    settings.ROLLYARD_DATASET_ROOTS = [root]

    response = register(uploader, str(file))

    assert response.status_code == 201, response.json()
    assert (response.json()["registered"], response.json()["format"]) == (True, "jsonl")  # from the suffix
    assert Dataset.objects.get().path == str(file.resolve())
    assert file.exists() and stored_files(data_dir) == []


@pytest.mark.parametrize("escape", ["dotdot", "symlink", "relative"])
def test_a_path_escaping_the_roots_is_refused(uploader, tmp_path, settings, data_dir, escape):
    root = tmp_path / "shared"
    root.mkdir()
    outside = tmp_path / "secret.jsonl"
    outside.write_bytes(jsonl(*GOOD_ROWS))
    (root / "link.jsonl").symlink_to(outside)
    settings.ROLLYARD_DATASET_ROOTS = [root]
    path = {
        "dotdot": f"{root}/../secret.jsonl",
        "symlink": str(root / "link.jsonl"),
        "relative": os.path.relpath(outside),
    }[escape]

    response = register(uploader, path)

    assert response.status_code == 400
    assert Dataset.objects.count() == 0


# --- the limit at the ASGI edge ----------------------------------------------------------------
# Django's ASGI handler spools a whole body to disk before any view runs; the wrapper in
# front of it (rollyard.asgi) has to stop an oversized upload while it streams.


async def post_through_asgi(chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[dict, dict, int]:
    """POST /api/datasets/ through the real ASGI application, one body message per chunk.
    Returns the response start, its body, and how many chunks the app asked for."""
    from rollyard.asgi import application

    scope = {"type": "http", "method": "POST", "path": "/api/datasets/", "query_string": b"", "headers": headers}
    communicator = ApplicationCommunicator(application, scope)
    for index, chunk in enumerate(chunks):
        await communicator.send_input({"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1})
    start = await communicator.receive_output(timeout=10)
    body = await communicator.receive_output(timeout=10)
    await communicator.wait(timeout=10)
    return start, json.loads(body["body"]), len(chunks) - communicator.input_queue.qsize()


async def test_a_streamed_body_is_cut_off_at_the_edge_once_it_passes_the_limit(settings):
    # limit + multipart overhead = 1 000 + 65 536 bytes: the second 40 000-byte chunk
    # passes it, so the app stops reading there and the third is never consumed.
    settings.ROLLYARD_MAX_UPLOAD_BYTES = 1000
    chunks = [b"x" * 40_000] * 3

    start, body, consumed = await post_through_asgi(chunks, [(b"content-type", b"multipart/form-data; boundary=b")])

    assert start["status"] == 413
    assert (body["error"]["code"], body["error"]["limit_bytes"]) == ("too_large", 1000)
    assert consumed == 2


async def test_a_declared_length_over_the_limit_is_refused_before_reading(settings):
    settings.ROLLYARD_MAX_UPLOAD_BYTES = 1000
    headers = [(b"content-type", b"multipart/form-data; boundary=b"), (b"content-length", b"10000000")]

    start, body, consumed = await post_through_asgi([b"x" * 10], headers)

    assert start["status"] == 413
    assert consumed == 0


def test_a_saved_hugging_face_dataset_folder_is_registered_with_its_splits(uploader, tmp_path, settings, data_dir):
    import datasets

    root = tmp_path / "shared"
    rows = [{"prompt": f"{n} + 1 =", "answer": str(n + 1)} for n in range(6)]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:4]), "validation": datasets.Dataset.from_list(rows[4:])}
    ).save_to_disk(str(root / "sums"))
    settings.ROLLYARD_DATASET_ROOTS = [root]

    response = register(uploader, str(root / "sums"))

    assert response.status_code == 201, response.json()
    # The DatasetDict's split names give the rows their splits ("validation" reads as test).
    assert response.json()["format"] == "hf_disk"  # a save_to_disk folder, recognised
    assert response.json()["split_counts"] == {"train": 4, "test": 2}
    assert response.json()["size_bytes"] > 0


def test_an_upload_sweeps_staged_files_a_dead_process_left_behind(uploader, data_dir):
    staging = data_dir / "tmp"
    staging.mkdir(parents=True)
    abandoned, recent = staging / "abandoned.upload", staging / "in-flight.upload"
    abandoned.write_bytes(b"half an upload")
    recent.write_bytes(b"another upload, still streaming")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(abandoned, (two_days_ago, two_days_ago))

    assert upload(uploader, "arith.jsonl", jsonl(*GOOD_ROWS)).status_code == 201

    assert not abandoned.exists() and recent.exists()
