"""Local reads and writes confined when they happen, against the real file system.

A hostile caller owns the folders a job reads and writes, so anything checked before the file
is opened can be a symlink by the time it is: these tests swap files and folders for links,
FIFOs and sparse giants and check that nothing lands or is read outside, nothing hangs, and
memory stays at the limit.
"""

from __future__ import annotations

import os
import threading
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.jobs.confinement import InputNotAllowed, StoragePolicy, read_check
from services.jobs.items import item_file
from services.jobs.manifest import ManifestLine, encode, job_manifest_uri
from services.jobs.records import ChunkTotals, InputSummary, JobState, JobStatus, ModelRef, Totals
from shared.errors import (
    InvalidJob,
    MaskfleetError,
    NotAFile,
    OutsideFolder,
    PayloadTooLarge,
    StorageError,
)
from shared.storage import LocalStorage

LIMIT = 1_000_000
SPARSE = 256 * 1024 * 1024


def refused_outside(prefix: Path) -> Callable[[str], None]:
    return read_check((str(prefix),), lambda where: InputNotAllowed(f"{where} is outside"))


def finishes(fifo: Path, run: Callable[[], Any]) -> Any:
    """`run()`'s result, or a failure if it blocked on the FIFO: then a writer is opened so
    the blocked reader sees the end of the FIFO and the test ends instead of hanging."""
    result: list[Any] = []

    def target() -> None:
        try:
            result.append(run())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY))  # unblocks the reader's open
        thread.join(30)
        pytest.fail("reading a FIFO blocked until something wrote to it")
    return result[0]


def peak_bytes(run: Callable[[], Any]) -> tuple[int, Any]:
    tracemalloc.start()
    try:
        try:
            outcome: Any = run()
        except MaskfleetError as exc:
            outcome = exc
        return tracemalloc.get_traced_memory()[1], outcome
    finally:
        tracemalloc.stop()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "private.jpg").write_bytes(b"\xff\xd8 private")
    (tmp_path / "in" / "a.jpg").write_bytes(b"\xff\xd8 a")
    return tmp_path


def test_a_checked_read_sees_through_links_to_where_the_file_is(root: Path) -> None:
    storage = LocalStorage()
    check = refused_outside(root / "in")
    (root / "in" / "leak.jpg").symlink_to(root / "secret" / "private.jpg")
    (root / "in" / "alias.jpg").symlink_to(root / "in" / "a.jpg")
    assert storage.read_checked(str(root / "in" / "a.jpg"), LIMIT, check) == b"\xff\xd8 a"
    assert storage.read_checked(str(root / "in" / "alias.jpg"), LIMIT, check) == b"\xff\xd8 a"
    with pytest.raises(InputNotAllowed, match=r"secret/private\.jpg"):
        storage.read_checked(str(root / "in" / "leak.jpg"), LIMIT, check)
    # the folder itself swapped for a link after its path was checked
    (root / "in").rename(root / "in.orig")
    (root / "in").symlink_to(root / "secret")
    with pytest.raises(InputNotAllowed):
        storage.read_checked(str(root / "in" / "private.jpg"), LIMIT, check)


def test_a_fifo_is_refused_at_once_instead_of_blocking_the_reader(root: Path) -> None:
    fifo = root / "in" / "x.jpg"
    os.mkfifo(fifo)
    storage = LocalStorage()
    assert isinstance(finishes(fifo, lambda: storage.read(str(fifo))), NotAFile)
    checked = finishes(fifo, lambda: storage.read_checked(str(fifo), LIMIT,
                                                          refused_outside(root / "in")))
    assert isinstance(checked, NotAFile)
    assert checked.code == "not_a_file"


def test_a_sparse_giant_is_refused_before_a_byte_of_it_is_read(root: Path) -> None:
    big = root / "in" / "big.jpg"
    with big.open("wb") as f:
        f.truncate(SPARSE)
    peak, outcome = peak_bytes(
        lambda: LocalStorage().read_checked(str(big), LIMIT, refused_outside(root / "in")))
    assert isinstance(outcome, PayloadTooLarge)
    assert str(SPARSE) in outcome.detail
    assert peak < LIMIT


def write_swap(root: Path, swap: Callable[[Path], None]) -> Path:
    """An output folder after one confined write, then `swap`ped by the caller; returns the
    folder a followed link would have written into."""
    out, outside = root / "out", root / "outside"
    outside.mkdir()
    LocalStorage().write_within(str(out), str(out / "sub" / "first.png"), b"1")
    swap(out)
    return outside


def relink(folder: Path, target: Path) -> None:
    folder.rename(folder.with_name(folder.name + ".orig"))
    folder.symlink_to(target)


@pytest.mark.parametrize("where", ["root", "sub", "_manifests"])
def test_a_confined_write_never_goes_through_a_folder_swapped_for_a_link(
        root: Path, where: str) -> None:
    storage = LocalStorage()
    outside = root / "outside"

    def swap(out: Path) -> None:
        if where == "root":
            relink(out, outside)
        elif where == "sub":
            relink(out / "sub", outside)
        else:
            (out / "_manifests").symlink_to(outside)

    write_swap(root, swap)
    out = root / "out"
    name = "_manifests/chunk-0.jsonl" if where == "_manifests" else "sub/second.png"
    with pytest.raises(OutsideFolder, match="symlink"):
        storage.write_within(str(out), f"{out}/{name}", b"2")
    assert list(outside.iterdir()) == []


def test_a_confined_write_makes_missing_folders_and_refuses_spelled_escapes(
        root: Path) -> None:
    storage = LocalStorage()
    out = root / "new" / "out"
    storage.write_within(str(out), str(out / "a" / "b" / "m.png"), b"mask")
    assert (out / "a" / "b" / "m.png").read_bytes() == b"mask"
    storage.write_within(str(out), str(out / "a" / "b" / "m.png"), b"again")
    assert sorted(p.name for p in (out / "a" / "b").iterdir()) == ["m.png"]
    assert (out / "a" / "b" / "m.png").read_bytes() == b"again"
    for bad in (f"{out}/../x.png", f"{out}/a/./m.png", f"{out}x/m.png", str(out)):
        with pytest.raises(OutsideFolder):
            storage.write_within(str(out), bad, b"x")
    (out / "blocked").write_bytes(b"a file where a folder should be")
    with pytest.raises(StorageError, match="a file is where a folder should be"):
        storage.write_within(str(out), str(out / "blocked" / "m.png"), b"x")
    # a link above the output, planted before the output first exists
    (root / "elsewhere").mkdir()
    (root / "linked").symlink_to(root / "elsewhere")
    with pytest.raises(OutsideFolder):
        storage.write_within(str(root / "linked" / "out"), str(root / "linked/out/m.png"), b"x")
    assert list((root / "elsewhere").rglob("*.png")) == []


def status(root: Path, kind: str) -> JobStatus:
    now = datetime.now(UTC)
    out = str(root / "out")
    return JobStatus(
        job_id="a" * 32, state=JobState.SUCCEEDED,
        input=InputSummary(kind=kind, prefix=str(root / "in") if kind == "prefix" else None),  # type: ignore[arg-type]
        output=out, model=ModelRef(name="unet", version=1), chunk_size=2,
        chunks=ChunkTotals(total=1, done=1), totals=Totals(images=2, done=2, failed=0),
        errors=[], manifest=job_manifest_uri(out), created_at=now, updated_at=now)


def finished_job(root: Path, inputs: list[Path]) -> None:
    out = root / "out"
    out.mkdir()
    lines = []
    for i, source in enumerate(inputs):
        (out / f"m{i}.png").write_bytes(b"\x89PNG mask")
        lines.append(ManifestLine(input=str(source), output=str(out / f"m{i}.png"),
                                  model="unet", model_version=1))
    Path(job_manifest_uri(str(out))).write_bytes(encode(lines))


def test_item_files_are_read_where_they_really_are(root: Path) -> None:
    (root / "in" / "leak.jpg").symlink_to(root / "secret" / "private.jpg")
    finished_job(root, [root / "in" / "a.jpg", root / "in" / "leak.jpg"])
    job = status(root, "prefix")
    assert item_file(job, 0, "input", LIMIT) == (b"\xff\xd8 a", "image/jpeg")
    with pytest.raises(InputNotAllowed) as refused:
        item_file(job, 1, "input", LIMIT)
    assert refused.value.status == 403
    (root / "out" / "m0.png").unlink()
    (root / "out" / "m0.png").symlink_to(root / "secret" / "private.jpg")
    with pytest.raises(InvalidJob, match="outside the job's output"):
        item_file(job, 0, "mask", LIMIT)


def test_a_list_jobs_inputs_are_read_only_under_the_allowed_prefixes(root: Path) -> None:
    finished_job(root, [root / "in" / "a.jpg", root / "secret" / "private.jpg"])
    job = status(root, "list")
    policy = StoragePolicy.build(inputs=[str(root / "in")], outputs=[str(root / "out")],
                                 overwrite=[], protected=[], allow_local=True)
    assert item_file(job, 0, "input", LIMIT, policy=policy)[0] == b"\xff\xd8 a"
    with pytest.raises(InputNotAllowed):  # an edited manifest naming another file
        item_file(job, 1, "input", LIMIT, policy=policy)
    with pytest.raises(InputNotAllowed):  # no rules to check against: nothing is read
        item_file(job, 0, "input", LIMIT)


def test_an_item_file_above_the_limit_costs_no_memory(root: Path) -> None:
    big = root / "in" / "big.jpg"
    with big.open("wb") as f:
        f.truncate(SPARSE)
    finished_job(root, [big])
    peak, outcome = peak_bytes(lambda: item_file(status(root, "prefix"), 0, "input", LIMIT))
    assert isinstance(outcome, PayloadTooLarge)
    assert peak < LIMIT


def test_an_item_replaced_by_a_fifo_is_refused_at_once(root: Path) -> None:
    fifo = root / "in" / "a.jpg"
    finished_job(root, [fifo])
    fifo.unlink()
    os.mkfifo(fifo)
    outcome = finishes(fifo, lambda: item_file(status(root, "prefix"), 0, "input", LIMIT))
    assert isinstance(outcome, NotAFile)
