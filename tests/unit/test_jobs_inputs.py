"""Which images a job segments, where each mask goes, how it is chunked (local disk only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.jobs.inputs import check_uri, chunk_count, mask_uri, resolve_inputs
from services.jobs.manifest import ManifestLine, assemble, chunk_manifest_uri, decode
from services.jobs.records import InputSummary, JobPlan, JobState, ModelRef
from shared.errors import InvalidJob, JobTooLarge, NoImagesFound
from shared.storage import LocalStorage


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def plan(output: str, images: int, chunk_size: int) -> JobPlan:
    return JobPlan(id="0" * 32, input=InputSummary(kind="list"), output=output, base=None,
                   model=ModelRef(name="unet", version=1), chunk_size=chunk_size,
                   chunks=chunk_count(images, chunk_size), images=images)


def test_a_prefix_keeps_images_only_and_skips_the_output_folder(tmp_path: Path) -> None:
    touch(tmp_path, "in/b.png", "in/a.JPG", "in/sub/c.jpeg", "in/notes.txt", "in/out/old.png",
          "in2/other.png")
    found = resolve_inputs(str(tmp_path / "in"), str(tmp_path / "in" / "out"),
                           allow_local=True, max_images=10)
    assert found.uris == [str(tmp_path / "in" / n) for n in ("a.JPG", "b.png", "sub/c.jpeg")]
    assert found.summary.prefix == f"{tmp_path}/in/"
    masks = [mask_uri(u, "gs://bkt/masks", found.base) for u in found.uris]
    assert masks == ["gs://bkt/masks/a.png", "gs://bkt/masks/b.png", "gs://bkt/masks/sub/c.png"]


def test_a_list_is_deduplicated_and_named_by_file_stem() -> None:
    found = resolve_inputs(["gs://bkt/x/cat.jpg", "gs://cat/y/dog.png", "gs://bkt/x/cat.jpg"],
                           "gs://bkt/out", allow_local=False, max_images=10)
    assert found.uris == ["gs://bkt/x/cat.jpg", "gs://cat/y/dog.png"]
    assert [mask_uri(u, "gs://bkt/out", found.base) for u in found.uris] == [
        "gs://bkt/out/cat.png", "gs://bkt/out/dog.png"]


@pytest.mark.parametrize(("source", "output", "reason"), [
    (["gs://bkt/a/cat.jpg", "gs://bkt/c/cat.png"], "gs://bkt/out", "would both write"),
    (["gs://bkt/a/cat.gif"], "gs://bkt/out", "is not a .jpg"),
    (["gs://bkt/out/cat.png"], "gs://bkt/out", "inside the output folder"),
    (["http://example.com/cat.png"], "gs://bkt/out", "only gs://"),
    (["gs://B@d/cat.png"], "gs://bkt/out", "valid bucket"),
    (["/etc/cat.png"], "gs://bkt/out", "local paths are refused"),
    (["gs://bkt/../cat.png"], "gs://bkt/out", "'..'"),
    (["gs://bkt/cat.png"], "gs://bkt/\nout", "control characters"),
])
def test_bad_requests_are_refused_with_the_reason(source: list[str], output: str,
                                                  reason: str) -> None:
    with pytest.raises(InvalidJob, match=reason):
        resolve_inputs(source, output, allow_local=False, max_images=10)


def test_relative_local_paths_are_refused_even_in_development() -> None:
    with pytest.raises(InvalidJob, match="absolute"):
        check_uri("images/", allow_local=True, what="input")


def test_an_empty_prefix_is_refused(tmp_path: Path) -> None:
    touch(tmp_path, "in/readme.txt")
    with pytest.raises(NoImagesFound) as caught:
        resolve_inputs(str(tmp_path / "in"), str(tmp_path / "out"), allow_local=True,
                       max_images=10)
    assert caught.value.status == 422


def test_too_many_images_is_413(tmp_path: Path) -> None:
    touch(tmp_path, *(f"in/{i}.png" for i in range(4)))
    with pytest.raises(JobTooLarge) as caught:
        resolve_inputs(str(tmp_path / "in"), str(tmp_path / "out"), allow_local=True,
                       max_images=3)
    assert caught.value.status == 413


def test_chunks_cover_every_image_once() -> None:
    job = plan("gs://bkt/out", images=10, chunk_size=4)
    assert job.chunks == 3
    bounds = [job.chunk_bounds(i) for i in range(job.chunks)]
    assert bounds == [(0, 4), (4, 8), (8, 10)]
    assert chunk_count(8, 4) == 2


def test_finished_states() -> None:
    assert {s for s in JobState if s.finished} == {
        JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}


def test_the_job_manifest_is_the_chunks_in_order(tmp_path: Path) -> None:
    job = plan(str(tmp_path / "out"), images=3, chunk_size=2)
    storage = LocalStorage()
    lines = [ManifestLine(input=f"gs://bkt/{i}.png", output=None, model="unet", model_version=1)
             for i in range(3)]
    for index, part in ((1, lines[2:]), (0, lines[:2])):
        uri = chunk_manifest_uri(job.output, index)
        storage.write(uri, b"".join(x.model_dump_json().encode() + b"\n" for x in part))
    written = assemble(job, lambda _: storage)
    assert [x.input for x in decode(storage.read(written))] == [x.input for x in lines]


def test_a_short_chunk_manifest_fails_the_assembly(tmp_path: Path) -> None:
    job = plan(str(tmp_path / "out"), images=3, chunk_size=2)
    storage = LocalStorage()
    storage.write(chunk_manifest_uri(job.output, 0), b"{}\n")
    with pytest.raises(InvalidJob, match="has 1 lines, expected 2"):
        assemble(job, lambda _: storage)
