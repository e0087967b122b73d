"""How many cores this container may use, and TensorFlow's thread pools sized to match.

TensorFlow sizes its intra- and inter-op pools from the cores it sees, which in a container are
the node's: on a 64-core node a pod limited to 2 CPUs starts 64 threads per pool, and the CFS
quota then throttles them in 100 ms slices (latency spikes, slower training). The limit comes,
in this order, from `MASKFLEET_CPU_LIMIT` (the chart can fill it through the downward API's
`resourceFieldRef: limits.cpu`), the cgroup's CPU quota (v2 `cpu.max`, v1
`cpu.cfs_quota_us`/`cpu.cfs_period_us`), and finally the visible core count.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")

log = logging.getLogger(__name__)


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """Cores allowed by the CPU quota of this process's cgroup; None when unlimited/unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())  # v1: -1 = unlimited
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def thread_count(configured: float | None, root: Path = CGROUP) -> int:
    """Threads per TensorFlow pool: the CPU limit rounded up, never more than the cores seen."""
    visible = os.cpu_count() or 1
    limit = configured if configured is not None else cgroup_cpu_limit(root)
    if limit is None:
        return visible
    return max(1, min(visible, math.ceil(limit)))


def size_tensorflow_threads(configured: float | None, root: Path = CGROUP) -> int:
    """Set both TensorFlow pools before the runtime starts; returns the thread count.

    Must run before the first TensorFlow op: afterwards TensorFlow refuses the change (it
    raises RuntimeError), which is logged and otherwise ignored.
    """
    import tensorflow as tf

    threads = thread_count(configured, root)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as exc:
        log.warning("TensorFlow threads already fixed", extra={"error": str(exc)})
        return threads
    log.info("TensorFlow threads sized from the CPU limit", extra={"threads": threads})
    return threads
