"""A succeeded job's items as the web page reads them: paged, and files only from the job."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.jobs.items import item_file, items
from services.jobs.manifest import ErrorEntry, ManifestLine, encode, job_manifest_uri
from services.jobs.records import (
    ChunkTotals,
    InputSummary,
    JobState,
    JobStatus,
    ModelRef,
    Totals,
)
from shared.errors import InvalidJob, JobNotFinished, NotFound, PayloadTooLarge

PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 64


def status(tmp_path: Path, state: JobState = JobState.SUCCEEDED,
           kind: str = "prefix") -> JobStatus:
    now = datetime.now(UTC)
    return JobStatus(
        job_id="a" * 32, state=state,
        input=InputSummary(kind=kind, prefix=str(tmp_path / "in") if kind == "prefix" else None),  # type: ignore[arg-type]
        output=str(tmp_path / "out"), model=ModelRef(name="unet", version=1), chunk_size=2,
        chunks=ChunkTotals(total=2, done=2), totals=Totals(images=3, done=3, failed=1),
        errors=[], manifest=job_manifest_uri(str(tmp_path / "out"))
        if state == JobState.SUCCEEDED else None, created_at=now, updated_at=now)


def write_job(tmp_path: Path, lines: list[ManifestLine]) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    for name in ("a.jpg", "b.png", "c.jpg"):
        (tmp_path / "in" / name).write_bytes(b"\xff\xd8" + name.encode())
    (tmp_path / "out" / "a.png").write_bytes(PNG)
    (tmp_path / "out" / "b.png").write_bytes(PNG + b"b")
    Path(job_manifest_uri(str(tmp_path / "out"))).write_bytes(encode(lines))


def line(tmp_path: Path, name: str, output: str | None = "default") -> ManifestLine:
    out = str(tmp_path / "out" / f"{name}.png") if output == "default" else output
    return ManifestLine(input=str(tmp_path / "in" / f"{name}.jpg"), output=out, model="unet",
                        model_version=1, width=4, height=3,
                        class_fractions={"pet": 0.5, "background": 0.25, "border": 0.25},
                        error=None if out else ErrorEntry(code="invalid_image", detail="bad"))


@pytest.fixture
def job(tmp_path: Path) -> JobStatus:
    write_job(tmp_path, [line(tmp_path, "a"), line(tmp_path, "b"), line(tmp_path, "c", None)])
    return status(tmp_path)


def test_items_are_paged_in_input_order(job: JobStatus, tmp_path: Path) -> None:
    first = items(job, 0, 2)
    assert (first.total, first.offset, [i.index for i in first.items]) == (3, 0, [0, 1])
    assert first.items[0].input.endswith("/in/a.jpg")
    assert first.items[0].output == str(tmp_path / "out" / "a.png")
    last = items(job, 2, 50)
    assert [(i.index, i.output, i.error.code if i.error else None) for i in last.items] == [
        (2, None, "invalid_image")]


def test_an_item_opens_as_its_input_and_its_mask(job: JobStatus) -> None:
    assert item_file(job, 1, "mask", 1000) == (PNG + b"b", "image/png")
    assert item_file(job, 0, "input", 1000) == (b"\xff\xd8a.jpg", "image/jpeg")


def test_a_failed_item_has_no_mask_and_unknown_items_are_404(job: JobStatus) -> None:
    with pytest.raises(NotFound, match="no mask"):
        item_file(job, 2, "mask", 1000)
    with pytest.raises(NotFound, match="no item 3"):
        item_file(job, 3, "input", 1000)


def test_files_above_the_limit_are_refused(job: JobStatus) -> None:
    with pytest.raises(PayloadTooLarge):
        item_file(job, 0, "mask", 10)


@pytest.mark.parametrize("state", [JobState.QUEUED, JobState.RUNNING, JobState.FAILED])
def test_items_exist_once_the_job_succeeded(tmp_path: Path, state: JobState) -> None:
    with pytest.raises(JobNotFinished):
        items(status(tmp_path, state), 0, 10)


@pytest.mark.parametrize("target", ["/etc/passwd.png", "{out}/../secret.png", "{out}x/a.png"])
def test_a_manifest_pointing_outside_the_job_reads_nothing(tmp_path: Path, target: str) -> None:
    uri = target.format(out=tmp_path / "out")
    write_job(tmp_path, [line(tmp_path, "a", uri)])
    with pytest.raises(InvalidJob, match="outside the job"):
        item_file(status(tmp_path), 0, "mask", 10_000)


def test_inputs_outside_the_prefix_are_refused(tmp_path: Path) -> None:
    bad = line(tmp_path, "a").model_copy(update={"input": "/etc/hostname.jpg"})
    write_job(tmp_path, [bad])
    with pytest.raises(InvalidJob, match="outside the job"):
        item_file(status(tmp_path), 0, "input", 10_000)
