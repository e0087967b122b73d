"""The CPU limit is read from the container's cgroup (v2 and v1 layouts) and sizes
TensorFlow's thread pools."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.cpu import cgroup_cpu_limit, thread_count


def cgroup_v2(root: Path, cpu_max: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(cpu_max + "\n")
    return root


def cgroup_v1(root: Path, quota: int, period: int = 100000) -> Path:
    (root / "cpu").mkdir(parents=True, exist_ok=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return root


@pytest.mark.parametrize(("cpu_max", "cores"), [("200000 100000", 2.0), ("150000 100000", 1.5),
                                                ("max 100000", None)])
def test_cgroup_v2_quota(tmp_path: Path, cpu_max: str, cores: float | None) -> None:
    assert cgroup_cpu_limit(cgroup_v2(tmp_path, cpu_max)) == cores


@pytest.mark.parametrize(("quota", "cores"), [(50000, 0.5), (400000, 4.0), (-1, None)])
def test_cgroup_v1_quota(tmp_path: Path, quota: int, cores: float | None) -> None:
    assert cgroup_cpu_limit(cgroup_v1(tmp_path, quota)) == cores


def test_no_cgroup_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None
    assert thread_count(None, tmp_path) == (os.cpu_count() or 1)


def test_threads_follow_the_limit_rounded_up_and_capped_by_the_cores_seen(
        tmp_path: Path) -> None:
    visible = os.cpu_count() or 1
    assert thread_count(None, cgroup_v2(tmp_path, "50000 100000")) == 1
    assert thread_count(0.5, tmp_path) == 1
    assert thread_count(1000.0, tmp_path) == visible, "a limit above the node's cores"
    if visible >= 2:
        assert thread_count(1.5, tmp_path) == 2
        assert thread_count(None, cgroup_v2(tmp_path, "100000 100000")) == 1


def test_tensorflow_uses_the_sized_pools(tmp_path: Path) -> None:
    """In a fresh process, as at every entry point: sized before the first op."""
    code = (
        "from pathlib import Path\n"
        "import tensorflow as tf\n"
        "from shared.cpu import size_tensorflow_threads\n"
        f"n = size_tensorflow_threads(None, Path({str(cgroup_v1(tmp_path, 100000))!r}))\n"
        "tf.constant(1.0) + 1.0\n"
        "print(n, tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.split() == ["1", "1", "1"]
