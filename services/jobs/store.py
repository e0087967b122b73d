"""Job state in the state Redis, shared by the API (submit, status, cancel) and every worker.

Keys, all under `maskfleet:job:<id>`:
- the hash itself: `plan` (JSON, without the input list: that is the plan file in storage, so
  a 100k-image job costs Redis a few hundred bytes), `state`, `done`, `failed`, `error`,
  `manifest`, `enqueued` (set once every chunk message was sent), `lock`, timestamps;
- `:chunks` set of completed chunk numbers: counts only move when a number is added to it, in
  the same Lua call, so a redelivered chunk never counts twice;
- `:errors` list (first `max_errors` per-item errors), `:attempts` / `:workers` hashes;
- `:leases`, `:crashes` and `:progress`: chunk leases and per-image progress (`leases.py`).
`maskfleet:jobs:active` holds unfinished job ids; `maskfleet:output:<uri>` locks an output
prefix to one unfinished job and is released by every move to a finished state. Finished jobs
expire after `ttl_seconds`. Every write that must be all-or-nothing is one Lua call, so a Redis
that fails or is full (`noeviction`) mid-submission leaves no half-made job or orphaned lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import redis

from services.jobs.records import (
    ChunkTotals,
    ItemError,
    JobPlan,
    JobState,
    JobStatus,
    Totals,
    now,
)
from services.jobs.settings import JobSettings
from shared.errors import JobNotFound, OutputInUse

PREFIX = "maskfleet:job:"
ACTIVE = "maskfleet:jobs:active"
OUTPUT_LOCK = "maskfleet:output:"
LEASES = "maskfleet:leases"
"""Sorted set of `<job id>:<chunk>` of chunks in progress, scored by lease deadline (ms)."""
JOB_PARTS = ("chunks", "errors", "attempts", "workers", "leases", "crashes", "progress")


def lease_member(job_id: str, index: int) -> str:
    return f"{job_id}:{index}"

# KEYS: job, active, lock. ARGV: job id, plan JSON, images, created_at, lock prefix, job
# key prefix. Returns '' when recorded, else the id of an unfinished job whose output is this
# output, or a folder inside it, or a folder around it (two jobs writing nested folders would
# overwrite each other's masks and manifests). The shebang makes Redis refuse the whole call
# up front when it is out of memory, so a full Redis never holds half a job.
_CREATE = """#!lua
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[1] and redis.call('SISMEMBER', KEYS[2], holder) == 1 then
  return holder
end
local function inside(a, b) return a == b or string.sub(a, 1, #b + 1) == b .. '/' end
local mine = string.sub(KEYS[3], #ARGV[5] + 1)
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local lock = id ~= ARGV[1] and redis.call('HGET', ARGV[6] .. id, 'lock')
  if lock then
    local other = string.sub(lock, #ARGV[5] + 1)
    if inside(mine, other) or inside(other, mine) then return id end
  end
end
redis.call('SET', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[1], 'plan', ARGV[2], 'state', 'queued', 'done', 0, 'failed', 0,
           'images', ARGV[3], 'lock', KEYS[3], 'created_at', ARGV[4], 'updated_at', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
return ''
"""

# KEYS: job, active, lock, then every other key of the job. ARGV: job id.
# Removes a job whose submission was refused after it was recorded (its caller got an error,
# not a job id). allow-oom: it must free a full Redis, not be refused by it.
_DISCARD = """#!lua flags=allow-oom
if redis.call('HGET', KEYS[1], 'enqueued') then return 0 end
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
redis.call('SREM', KEYS[2], ARGV[1])
for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: job, chunks, errors, job leases, leases zset, progress. ARGV: chunk, processed,
# failed, now, max_errors, lease token, lease member, chunk size, error JSON...
# Fenced: only the current lease holder's results count ({0, -2} for anybody else); a holder
# whose entry is gone may still record (the set below keeps that exactly once).
_COMPLETE_CHUNK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, -1} end
local holder = redis.call('HGET', KEYS[4], ARGV[1])
if holder and holder ~= ARGV[6] then return {0, -2} end
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[7])
for i = 0, tonumber(ARGV[8]) - 1 do redis.call('HDEL', KEYS[6], ARGV[1] .. ':' .. i) end
local added = redis.call('SADD', KEYS[2], ARGV[1])
if added == 1 then
  redis.call('HINCRBY', KEYS[1], 'done', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'failed', ARGV[3])
  local room = tonumber(ARGV[5]) - redis.call('LLEN', KEYS[3])
  for i = 9, math.min(#ARGV, 8 + room) do redis.call('RPUSH', KEYS[3], ARGV[i]) end
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[4])
end
return {added, redis.call('SCARD', KEYS[2])}
"""

# KEYS: job, active, then every key of the job. ARGV: to, now, error, manifest, ttl, job id,
# then the states it may move from. Returns the previous state, or false if not allowed.
_TRANSITION = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
local allowed = false
for i = 7, #ARGV do if ARGV[i] == state then allowed = true end end
if not allowed then return false end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated_at', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'manifest', ARGV[4]) end
if tonumber(ARGV[5]) > 0 then
  redis.call('SREM', KEYS[2], ARGV[6])
  local lock = redis.call('HGET', KEYS[1], 'lock')
  if lock and redis.call('GET', lock) == ARGV[6] then redis.call('DEL', lock) end
  for i = 3, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
end
return state
"""


@dataclass(frozen=True)
class ChunkCompletion:
    counted: bool
    """False when the chunk had already been counted (a redelivery)."""
    chunks_done: int
    """Completed chunks after this one; -1 when the job no longer exists, -2 when this
    worker's lease was taken over by another attempt (its results do not count)."""


def key(job_id: str, part: str = "") -> str:
    return f"{PREFIX}{job_id}{':' + part if part else ''}"


def text(value: bytes | str) -> str:
    """A reply as str: the client decodes responses (`JobStore.from_settings`), but redis-py's hints
    admit bytes for every reply, so values pass through here instead of a cast."""
    return value.decode() if isinstance(value, bytes) else value


class JobStore:
    def __init__(self, client: redis.Redis, *, max_errors: int = 100,
                 ttl_seconds: int = 7 * 24 * 3600) -> None:
        self.redis = client
        self.max_errors = max_errors
        self.ttl_seconds = ttl_seconds
        self._create = client.register_script(_CREATE)
        self._discard = client.register_script(_DISCARD)
        self._complete = client.register_script(_COMPLETE_CHUNK)
        self._transition = client.register_script(_TRANSITION)

    @classmethod
    def from_settings(cls, settings: JobSettings) -> JobStore:
        """The store both the API and the worker use, bounded by the same job settings."""
        return cls(settings.state_redis().client(decode_responses=True),
                   max_errors=settings.job_max_errors, ttl_seconds=settings.job_ttl_seconds)

    @staticmethod
    def _keys(job_id: str) -> list[str]:
        return [key(job_id)] + [key(job_id, p) for p in JOB_PARTS]

    def output_writer(self, output: str) -> str | None:
        """The unfinished job writing `output`, if any (create() re-checks atomically)."""
        raw = self.redis.get(OUTPUT_LOCK + output.rstrip("/"))
        holder = text(raw) if raw else None
        return holder if holder and self.redis.sismember(ACTIVE, holder) else None

    def create(self, plan: JobPlan) -> None:
        """Record a queued job and lock its output, in one step; refuse an output another
        unfinished job writes to, in, or around (one scan of the unfinished jobs)."""
        lock = OUTPUT_LOCK + plan.output.rstrip("/")
        holder = text(self._create(
            keys=[key(plan.id), ACTIVE, lock],
            args=[plan.id, plan.model_dump_json(), plan.images, plan.created_at.isoformat(),
                  OUTPUT_LOCK, PREFIX]))
        if holder:
            raise OutputInUse(f"output {plan.output} is, contains or lies inside the output of "
                              f"unfinished job {holder}; cancel it or choose another output")

    def discard(self, plan: JobPlan) -> None:
        """Forget a job whose submission failed after `create`: no record, no output lock."""
        self._discard(keys=[key(plan.id), ACTIVE, OUTPUT_LOCK + plan.output.rstrip("/"),
                            *(key(plan.id, p) for p in JOB_PARTS)], args=[plan.id])

    def mark_enqueued(self, job_id: str) -> None:
        """Every chunk message was sent: the reaper leaves this job alone from now on."""
        self.redis.hset(key(job_id), "enqueued", 1)

    def plan(self, job_id: str) -> JobPlan:
        raw = self.redis.hget(key(job_id), "plan")
        if raw is None:
            raise JobNotFound(f"no job {job_id}")
        return JobPlan.model_validate_json(raw)

    def state(self, job_id: str) -> JobState | None:
        raw = self.redis.hget(key(job_id), "state")
        return JobState(text(raw)) if raw else None

    def status(self, job_id: str) -> JobStatus:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(key(job_id))
        pipe.scard(key(job_id, "chunks"))
        pipe.lrange(key(job_id, "errors"), 0, -1)
        fields, chunks_done, errors = pipe.execute()
        if not fields:
            raise JobNotFound(f"no job {job_id}")
        plan = JobPlan.model_validate_json(fields["plan"])
        return JobStatus(
            job_id=plan.id, state=JobState(fields["state"]), input=plan.input,
            output=plan.output, model=plan.model, chunk_size=plan.chunk_size,
            chunks=ChunkTotals(total=plan.chunks, done=chunks_done),
            totals=Totals(images=plan.images, done=int(fields["done"]),
                          failed=int(fields["failed"])),
            errors=[ItemError.model_validate_json(e) for e in errors],
            manifest=fields.get("manifest") or None, error=fields.get("error") or None,
            submitted_by=plan.submitted_by, created_at=datetime.fromisoformat(fields["created_at"]),
            updated_at=datetime.fromisoformat(fields["updated_at"]),
        )

    def complete_chunk(self, job_id: str, index: int, processed: int,
                       errors: Iterable[ItemError], *, token: str) -> ChunkCompletion:
        """Count a chunk once, and only for the holder of its current lease (`token`)."""
        listed = [e.model_dump_json() for e in errors]
        counted, done = self._complete(
            keys=[key(job_id), key(job_id, "chunks"), key(job_id, "errors"),
                  key(job_id, "leases"), LEASES, key(job_id, "progress")],
            args=[index, processed, len(listed), now().isoformat(), self.max_errors, token,
                  lease_member(job_id, index), processed, *listed],
        )
        return ChunkCompletion(counted=bool(counted), chunks_done=int(done))

    def chunk_recorded(self, job_id: str, index: int) -> bool:
        return bool(self.redis.sismember(key(job_id, "chunks"), str(index)))

    def chunks_done(self, job_id: str) -> int:
        return int(self.redis.scard(key(job_id, "chunks")))

    def chunk_attempts(self, job_id: str) -> dict[int, tuple[int, str]]:
        """Chunk -> (attempts, last worker): how often each chunk was started, and where."""
        attempts = self.redis.hgetall(key(job_id, "attempts"))
        workers = self.redis.hgetall(key(job_id, "workers"))
        return {int(c): (int(n), text(workers.get(c, ""))) for c, n in attempts.items()}

    def orphaned(self, job_id: str, chunk: int) -> bool:
        """The job still runs (or waits), and this chunk's held message is all that can move it
        on: no worker ever leased or recorded the chunk (no lease will expire), or the chunk
        was recorded and the job is still unfinished (its worker died between recording the
        chunk and writing the job's manifest; the message's redelivery finishes the job, see
        `ChunkRunner.run`). A chunk leased and not recorded is the lease's to take back."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(key(job_id), "state")
        pipe.sismember(key(job_id, "chunks"), str(chunk))
        pipe.hexists(key(job_id, "attempts"), chunk)
        state, recorded, attempted = pipe.execute()
        if (text(state) if state else "") not in (JobState.QUEUED.value, JobState.RUNNING.value):
            return False
        return bool(recorded) or not attempted

    def succeed(self, job_id: str, manifest: str) -> bool:
        return self._move(job_id, JobState.SUCCEEDED, manifest=manifest)

    def fail(self, job_id: str, error: str) -> bool:
        return self._move(job_id, JobState.FAILED, error=error)

    def cancel(self, job_id: str) -> bool:
        """Cancel an unfinished job; chunks that have not started will skip themselves."""
        return self._move(job_id, JobState.CANCELLED)

    def _move(self, job_id: str, to: JobState, *, error: str = "", manifest: str = "",
              from_states: Sequence[JobState] = (JobState.QUEUED, JobState.RUNNING)) -> bool:
        ttl = self.ttl_seconds if to.finished else 0
        previous = self._transition(
            keys=[key(job_id), ACTIVE, *self._keys(job_id)],
            args=[to.value, now().isoformat(), error, manifest, ttl, job_id,
                  *(s.value for s in from_states)],
        )
        return previous is not None

    def unenqueued(self, limit: int = 1000) -> list[tuple[str, datetime]]:
        """(job id, created_at) of queued jobs whose chunk messages were never all sent."""
        ids = sorted(text(m) for m in self.redis.smembers(ACTIVE))[:limit]
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(key(job_id), "state", "enqueued", "created_at")
        found = []
        for job_id, (state, enqueued, created) in zip(ids, pipe.execute(), strict=True):
            if state == JobState.QUEUED.value and not enqueued and created:
                found.append((job_id, datetime.fromisoformat(text(created))))
        return found

    def active(self, limit: int = 200) -> list[tuple[str, int, int, int]]:
        """(job id, images, done, failed) of unfinished jobs, for the metrics endpoint."""
        ids = sorted(text(m) for m in self.redis.smembers(ACTIVE))[:limit]
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(key(job_id), "images", "done", "failed")
        found = []
        for job_id, (images, done, failed) in zip(ids, pipe.execute(), strict=True):
            if images is not None:
                found.append((job_id, int(images), int(done or 0), int(failed or 0)))
        return found
