"""Chunk leases: who runs a chunk right now, renewed by a heartbeat, taken back when it stops.

A worker that starts a chunk takes its lease: a fencing token (the attempt number) in
`maskfleet:job:<id>:leases` and a deadline in the sorted set `maskfleet:leases`, both set in one
Lua call against Redis' own clock. While the chunk runs, a heartbeat thread moves the deadline
forward every `job_heartbeat_seconds`; if its token is no longer the current one it tells the
runner, which stops at the next batch. Only the current token may save progress or record the
chunk (`JobStore.complete_chunk`), so a slow worker whose lease was taken over never counts
twice, and the exactly-once-per-input accounting stays.

A worker that dies (SIGKILL, OOM, node loss) stops renewing; once the deadline passes, the
reaper (every worker runs one) counts a crash for that chunk and sends a new chunk message.
Recovery therefore takes at most `job_lease_seconds` plus one reaper interval, whatever the
hostname of the replacement; Celery's visibility timeout stays only as a backstop. A chunk
whose runs crashed `job_max_attempts` times is not run again: its unfinished images become
`worker_crashed` per-item errors (`chunk.py`). Images finished before a crash are kept as
progress, and a rerun after a crash segments one image at a time, so a poison image costs only
itself and the images after it in its chunk.

A lease released because of an ordinary error (a storage hiccup that Celery retries) is marked
`released`: the retry takes it at once, and if the retry never comes the reaper requeues the
chunk without counting a crash.

The scripts derive job keys from the `maskfleet:job:` prefix, so they need one Redis (not a
Redis Cluster), which is what the chart runs.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

import redis

from services.jobs.store import LEASES, PREFIX, key, lease_member, text

log = logging.getLogger(__name__)

RELEASED = "released"

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: job, chunks, leases zset, job leases, attempts, workers, crashes.
# ARGV: chunk, member, worker, lease ms, now ISO, token.
# Returns {attempt, crashes}, or {-1} job gone, {-2} job finished, {-3} chunk recorded,
# {-4} another live lease holds the chunk.
_ACQUIRE = _NOW + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {-1} end
if state ~= 'queued' and state ~= 'running' then return {-2} end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return {-3} end
local deadline = redis.call('ZSCORE', KEYS[3], ARGV[2])
local holder = redis.call('HGET', KEYS[4], ARGV[1])
if deadline and tonumber(deadline) > now and holder and holder ~= 'released' then
  return {-4}
end
local attempt = redis.call('HINCRBY', KEYS[5], ARGV[1], 1)
redis.call('HSET', KEYS[4], ARGV[1], ARGV[6])
redis.call('HSET', KEYS[6], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[2])
if state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'running', 'updated_at', ARGV[5])
end
return {attempt, tonumber(redis.call('HGET', KEYS[7], ARGV[1]) or '0')}
"""

# A holder whose lease entry is gone (the reaper took it back after a silence, or Redis lost
# its last second of writes) takes it again: a rerun that was queued meanwhile then finds a live
# lease and skips itself, and the chunk is never left without anyone responsible for it.
_REASSERT = """
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return 0 end
local holder = redis.call('HGET', KEYS[2], ARGV[1])
if holder and holder ~= ARGV[3] then return 0 end
if not holder then redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) end
"""

# KEYS: leases zset, job leases, chunks. ARGV: chunk, member, token, lease ms.
# 1 renewed, 0 lost (another holder, or the chunk is already recorded).
_RENEW = _NOW + _REASSERT + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[2])
return 1
"""

# KEYS: leases zset, job leases. ARGV: chunk, member, token, grace ms.
_RELEASE = _NOW + """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], 'released')
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[2])
return 1
"""

# KEYS: leases zset, job leases, chunks, progress. ARGV: chunk, member, token, lease ms,
# first position, line JSON...
_SAVE_PROGRESS = _NOW + _REASSERT + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[2])
local first = tonumber(ARGV[5])
for i = 6, #ARGV do redis.call('HSET', KEYS[4], ARGV[1] .. ':' .. (first + i - 6), ARGV[i]) end
return 1
"""

# KEYS: leases zset. ARGV: job key prefix, limit.
# Returns the members whose lease expired and whose chunk must run again, each followed by
# 1 when that counted as a crash (a silent holder) and 0 when it had been released.
_REAP = _NOW + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, member in ipairs(due) do
  local job, chunk = string.match(member, '^(.+):(%d+)$')
  local base = ARGV[1] .. job
  local state = redis.call('HGET', base, 'state')
  local holder = redis.call('HGET', base .. ':leases', chunk)
  redis.call('ZREM', KEYS[1], member)
  redis.call('HDEL', base .. ':leases', chunk)
  if (state == 'queued' or state == 'running')
      and redis.call('SISMEMBER', base .. ':chunks', chunk) == 0 then
    local crashed = 0
    if holder and holder ~= 'released' then
      redis.call('HINCRBY', base .. ':crashes', chunk, 1)
      crashed = 1
    end
    table.insert(out, member)
    table.insert(out, crashed)
  end
end
return out
"""


@dataclass(frozen=True)
class Lease:
    job_id: str
    chunk: int
    token: str
    """Unique per run: the fencing token that progress and completion must present."""
    attempt: int
    """How many times the chunk was started, this run included."""
    crashes: int
    """Earlier runs of this chunk whose worker died (their leases expired)."""


@dataclass(frozen=True)
class Refused:
    reason: str
    """`gone`, `finished`, `recorded` or `held` (another live lease runs the chunk)."""


_REFUSALS = {-1: "gone", -2: "finished", -3: "recorded", -4: "held"}


@dataclass(frozen=True)
class Requeue:
    job_id: str
    chunk: int
    crashed: bool


class ChunkLeases:
    def __init__(self, client: redis.Redis, *, lease_seconds: float) -> None:
        self.redis = client
        self.lease_ms = int(lease_seconds * 1000)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._save = client.register_script(_SAVE_PROGRESS)
        self._reap = client.register_script(_REAP)

    def acquire(self, job_id: str, chunk: int, worker: str, now_iso: str) -> Lease | Refused:
        token = f"{worker}/{uuid.uuid4().hex}"
        reply = self._acquire(
            keys=[key(job_id), key(job_id, "chunks"), LEASES, key(job_id, "leases"),
                  key(job_id, "attempts"), key(job_id, "workers"), key(job_id, "crashes")],
            args=[chunk, lease_member(job_id, chunk), worker, self.lease_ms, now_iso, token])
        first = int(reply[0])
        if first < 0:
            return Refused(_REFUSALS[first])
        return Lease(job_id, chunk, token, first, int(reply[1]))

    def renew(self, lease: Lease) -> bool:
        """False when the lease is no longer this holder's: stop and let the new one work."""
        return bool(self._renew(
            keys=[LEASES, key(lease.job_id, "leases"), key(lease.job_id, "chunks")],
            args=[lease.chunk, lease_member(lease.job_id, lease.chunk), lease.token,
                  self.lease_ms]))

    def release(self, lease: Lease) -> None:
        """Hand the chunk back after an ordinary error (Celery retries it); not a crash."""
        self._release(keys=[LEASES, key(lease.job_id, "leases")],
                      args=[lease.chunk, lease_member(lease.job_id, lease.chunk), lease.token,
                            self.lease_ms])

    def retry_later(self, job_id: str, chunk: int) -> None:
        """A requeue could not be sent: leave an expired, released lease so that the next
        reaper pass tries again (without counting another crash)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key(job_id, "leases"), str(chunk), RELEASED)
        pipe.zadd(LEASES, {lease_member(job_id, chunk): 0})
        pipe.execute()

    def save_progress(self, lease: Lease, first: int, lines: Sequence[str]) -> bool:
        """Keep finished images' manifest lines, so a rerun after a crash skips them."""
        if not lines:
            return True
        return bool(self._save(
            keys=[LEASES, key(lease.job_id, "leases"), key(lease.job_id, "chunks"),
                  key(lease.job_id, "progress")],
            args=[lease.chunk, lease_member(lease.job_id, lease.chunk), lease.token,
                  self.lease_ms, first, *lines]))

    def progress(self, job_id: str, chunk: int, size: int) -> list[str]:
        """Manifest lines of the chunk's first images that earlier runs finished, in order."""
        if size <= 0:
            return []
        found = self.redis.hmget(key(job_id, "progress"), [f"{chunk}:{i}" for i in range(size)])
        lines = []
        for raw in found:
            if raw is None:
                break
            lines.append(text(raw))
        return lines

    def reap(self, limit: int = 100) -> list[Requeue]:
        """Take back every chunk whose lease expired; the caller sends their messages."""
        reply = self._reap(keys=[LEASES], args=[PREFIX, limit])
        found = []
        for member, crashed in zip(reply[::2], reply[1::2], strict=True):
            job_id, _, chunk = text(member).rpartition(":")
            found.append(Requeue(job_id, int(chunk), bool(int(crashed))))
        return found


class Heartbeat:
    """Renews a lease from a background thread while a chunk runs (`with Heartbeat(...)`)."""

    def __init__(self, leases: ChunkLeases, lease: Lease, every_seconds: float,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self.leases = leases
        self.lease = lease
        self.every = every_seconds
        self.lost = threading.Event()
        """Set when another attempt holds the lease: this run's results no longer count."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"lease-{lease.job_id[:8]}-{lease.chunk}")
        self._on_error = on_error

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                if not self.leases.renew(self.lease):
                    log.warning("chunk lease lost to another attempt",
                                extra={"job_id": self.lease.job_id, "chunk": self.lease.chunk})
                    self.lost.set()
                    return
            except redis.RedisError as exc:  # Redis away for a moment: keep trying
                log.warning("chunk lease not renewed", extra={"error": type(exc).__name__})
                if self._on_error:
                    self._on_error(exc)
