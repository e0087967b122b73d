"""Answers kept durably for a later correction: in storage, under the feedback prefix.

The Redis log (served.py) holds a bounded, short-lived share of answers, enough for a client
that corrects within seconds. A person correcting a mask in the web page needs hours, so an
answer asked to be kept (`/v1/segment?keep=true`), and a configurable sample of the others, is
also written to storage, where it lives for `feedback_keep_ttl_seconds` (default 7 days):

    <feedback>/kept/<name>/image.jpg|png   the bytes the client sent
    <feedback>/kept/<name>/served.png      the mask that was served
    <feedback>/kept/index/<name>.json      the index entry, written last: what makes it kept

`<name>` is a digest of the feedback token (the token itself never appears in a listing), so
only the holder of the token finds the entry, and only the caller it was served to may use it.
`kept/` is outside `images/` and `annotations/`, so the retraining loader never reads it.

Bounds: at most `feedback_keep_max_entries` entries and `feedback_keep_max_bytes` bytes, the
oldest dropped first, tracked in one Redis sorted set (score = expiry time) and one counter,
updated atomically with every keep; entries past their expiry are deleted then too, and a
lookup refuses (and deletes) an expired entry by its own `expires_at`. The bucket's lifecycle
rule (docs/ui.md) is the backstop for anything Redis forgot. Writes run in a background task,
bounded in number, like the Redis log's: a slow bucket never delays an answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable

import redis.asyncio as redis
from pydantic import BaseModel

from shared.errors import ObjectNotFound
from shared.storage import Storage, join, storage_for

from ..settings import InferenceSettings
from .served import ServedMask

log = logging.getLogger(__name__)

INDEX_KEY = "maskfleet:feedback:kept"
"""Sorted set of kept names, scored by expiry (unix seconds): the oldest expire first."""
SIZES_KEY = "maskfleet:feedback:kept:sizes"
"""Hash name -> bytes, so the byte counter stays exact whatever is dropped."""
BYTES_KEY = "maskfleet:feedback:kept:bytes"
MAX_PENDING_WRITES = 16
CLOSE_TIMEOUT_SECONDS = 10.0

_REMOVE = """
local function remove(name)
  if redis.call('ZREM', KEYS[1], name) == 1 then
    redis.call('DECRBY', KEYS[3], tonumber(redis.call('HGET', KEYS[2], name) or '0'))
    redis.call('HDEL', KEYS[2], name)
  end
end
"""

# Add one entry, then drop and return what must go: expired entries, then the oldest while
# over the count or the byte bound.
_ADMIT = _REMOVE + """
local name, expires, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_entries, max_bytes, size = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
remove(name)
redis.call('ZADD', KEYS[1], expires, name)
redis.call('HSET', KEYS[2], name, size)
redis.call('INCRBY', KEYS[3], size)
local victims = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, v in ipairs(victims) do remove(v) end
while redis.call('ZCARD', KEYS[1]) > max_entries
    or tonumber(redis.call('GET', KEYS[3]) or '0') > max_bytes do
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0)
  if #oldest == 0 or oldest[1] == name then break end
  remove(oldest[1])
  victims[#victims + 1] = oldest[1]
end
return victims
"""


class KeptEntry(BaseModel):
    """`kept/index/<name>.json`: everything but the two files."""

    caller: str
    request_id: str
    model: str
    version: int
    image_sha256: str
    cached: bool
    image: str
    """File name of the image beside `served.png` (`image.jpg` or `image.png`)."""
    bytes: int
    kept_at: float
    expires_at: float


def entry_name(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:40]


class KeptAnswers:
    """Keeps answers in storage for `ttl_seconds`, bounded in count and bytes."""

    def __init__(
        self,
        uri: str,
        client: redis.Redis,  # type: ignore[type-arg]
        *,
        ttl_seconds: int,
        max_entries: int,
        max_bytes: int,
        sample_rate: float,
        max_entry_bytes: int,
        storage: Callable[[str], Storage] = storage_for,
        clock: Callable[[], float] = time.time,
        sample: Callable[[], float] = random.random,
    ) -> None:
        self.root = join(uri.rstrip("/"), "kept")
        self._client = client
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._sample_rate = sample_rate
        self._max_entry_bytes = max_entry_bytes
        self._storage = storage
        self._clock = clock
        self._sample = sample
        self._pending: dict[str, asyncio.Task[None]] = {}

    @classmethod
    def from_settings(cls, settings: InferenceSettings,
                      client: redis.Redis) -> KeptAnswers:  # type: ignore[type-arg]
        """Under the feedback prefix, indexed in the feedback log's Redis (the state role)."""
        return cls(settings.feedback_uri, client,
                   ttl_seconds=settings.feedback_keep_ttl_seconds,
                   max_entries=settings.feedback_keep_max_entries,
                   max_bytes=settings.feedback_keep_max_bytes,
                   sample_rate=settings.feedback_keep_sample_rate,
                   max_entry_bytes=settings.feedback_max_entry_bytes)

    def _uris(self, name: str, image: str = "") -> tuple[str, str, str]:
        return (join(self.root, name, image), join(self.root, name, "served.png"),
                join(self.root, "index", f"{name}.json"))

    def wanted(self, served: ServedMask, asked: bool) -> bool:
        """Asked for (`keep=true`) or sampled in, and small enough."""
        if not (asked or (self._sample_rate > 0 and self._sample() < self._sample_rate)):
            return False
        return len(served.image) + len(served.mask_png) <= self._max_entry_bytes

    def keep(self, served: ServedMask, asked: bool) -> bool:
        """Start keeping `served` durably if wanted; True when it will be kept."""
        if not self.wanted(served, asked):
            return False
        if len(self._pending) >= MAX_PENDING_WRITES:
            log.warning("durable keep dropped: too many writes in flight",
                        extra={"request_id": served.request_id})
            return False
        token = served.token
        task = asyncio.create_task(self._write(served), name=f"keep-durable-{served.request_id}")
        self._pending[token] = task
        task.add_done_callback(lambda done: self._pending.pop(token, None)
                               if self._pending.get(token) is done else None)
        return True

    async def _write(self, served: ServedMask) -> None:
        try:
            await asyncio.to_thread(self._write_files, served)
            now = self._clock()
            victims = await self._client.eval(  # type: ignore[no-untyped-call]
                _ADMIT, 3, INDEX_KEY, SIZES_KEY, BYTES_KEY, entry_name(served.token),
                now + self._ttl, now, self._max_entries, self._max_bytes,
                len(served.image) + len(served.mask_png))
            for member in victims:
                name = member.decode() if isinstance(member, bytes) else str(member)
                await asyncio.to_thread(self._delete_files, name)
        except Exception:  # a background write has no caller to report to
            log.exception("keeping an answer durably failed",
                          extra={"request_id": served.request_id})

    def _write_files(self, served: ServedMask) -> None:
        name = entry_name(served.token)
        image_name = "image.png" if served.image.startswith(b"\x89PNG") else "image.jpg"
        image_uri, mask_uri, index_uri = self._uris(name, image_name)
        now = self._clock()
        entry = KeptEntry(caller=served.caller, request_id=served.request_id,
                          model=served.model, version=served.version,
                          image_sha256=served.image_sha256, cached=served.cached,
                          image=image_name, bytes=len(served.image) + len(served.mask_png),
                          kept_at=now, expires_at=now + self._ttl)
        store = self._storage(self.root)
        store.write(image_uri, served.image,
                    "image/png" if image_name.endswith(".png") else "image/jpeg")
        store.write(mask_uri, served.mask_png, "image/png")
        store.write(index_uri, entry.model_dump_json().encode(), "application/json")

    def _delete_files(self, name: str) -> None:
        store = self._storage(self.root)
        index_uri = self._uris(name)[2]
        store.delete(index_uri)  # first: without it the files are no longer an entry
        for uri in store.list(join(self.root, name) + "/"):
            store.delete(uri)

    async def find(self, token: str, caller: str) -> ServedMask | None:
        """The answer kept under `token` for `caller`; None when unknown, expired (then
        deleted) or served to someone else."""
        pending = self._pending.get(token)
        if pending is not None:
            await asyncio.wait([pending])
        return await asyncio.to_thread(self._read, token, caller)

    def _read(self, token: str, caller: str) -> ServedMask | None:
        name = entry_name(token)
        _, mask_uri, index_uri = self._uris(name)
        store = self._storage(self.root)
        try:
            entry = KeptEntry.model_validate_json(store.read(index_uri))
            if entry.caller != caller:
                return None
            if entry.expires_at <= self._clock():
                self._delete_files(name)
                return None
            image = store.read(join(self.root, name, entry.image))
            mask = store.read(mask_uri)
        except ObjectNotFound:
            return None
        return ServedMask(token, entry.caller, entry.request_id, entry.model, entry.version,
                          image, entry.image_sha256, mask, entry.cached)

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(list(self._pending.values()), timeout=CLOSE_TIMEOUT_SECONDS)
