"""URI normalisation and the escape check the storage rules rely on (no servers needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.jobs.confinement import escapes, normalise, read_check, under
from services.jobs.inputs import mask_uri
from shared.errors import InvalidJob


@pytest.mark.parametrize(("uri", "expected"), [
    ("gs://b/data/annotations", "gs://b/data/annotations"),
    ("gs://b/data/annotations/", "gs://b/data/annotations"),
    ("gs://b//data///./annotations", "gs://b/data/annotations"),
    ("gs://b/jobs/out/../../data/annotations", "gs://b/data/annotations"),
    ("gs://b/%64ata/annotations", "gs://b/data/annotations"),
    ("gs://b/data%2F..%2Fdata/annotations", "gs://b/data/annotations"),
])
def test_every_spelling_of_a_folder_normalises_to_one(uri, expected):
    assert normalise(uri) == expected


@pytest.mark.parametrize("uri", ["gs://b/../other-bucket/x", "gs://b/%252e%252e/x",
                                 "gs://b/a\x00b", "s3://b/x", "", "gs:///x"])
def test_unusable_or_hostile_uris_are_refused(uri):
    with pytest.raises(InvalidJob):
        normalise(uri)


def test_local_paths_resolve_dots_and_symlinks(tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "link").symlink_to(tmp_path / "data")
    assert normalise(str(tmp_path / "jobs" / "link")) == str(tmp_path / "data")
    assert normalise(f"file://{tmp_path}/jobs/./../data/") == str(tmp_path / "data")


def test_under_respects_folder_boundaries():
    assert under("gs://b/results/x", "gs://b/results")
    assert under("gs://b/results", "gs://b/results/")
    assert not under("gs://b/results-old/x", "gs://b/results")


def test_a_listed_object_name_with_dotdot_would_escape_the_output():
    base, output = "gs://b/in/", "gs://b/out/run"
    assert not escapes(mask_uri("gs://b/in/nested/cat.jpg", output, base), output)
    for name in ("gs://b/in/../../data/annotations/trimaps/cat.jpg",
                 "gs://b/in/a/../../../x.jpg"):
        assert escapes(mask_uri(name, output, base), output), name


@pytest.mark.parametrize("name", ["50%25off.jpg", "%2e%2e/%2e%2e/x.jpg", "a%2541.png",
                                  "%ZZ.jpg"])
def test_a_listed_name_is_taken_as_spelled_not_percent_decoded(name: str) -> None:
    """Storage lists literal names: `%2e%2e` is a folder called that, not `..`, and
    `50%25off.jpg` is a file called that, not a second encoding (which a caller's URI is)."""
    base, output = "gs://b/in/", "gs://b/out/run"
    target = mask_uri(base + name, output, base)
    assert target.startswith(output + "/")
    assert "%" in target
    assert not escapes(target, output)
    refusals: list[str] = []

    def refuse(where: str) -> InvalidJob:
        refusals.append(where)
        return InvalidJob(where)

    read_check(("gs://b/in",), refuse)(base + name)
    assert refusals == []
