"""What /v1/segment keeps for feedback: sampled, bounded per entry, written in the background,
and never a problem for the answer when Redis fails. (The max-entries bound and the expiry run
in Redis itself: tests/integration/test_feedback_e2e.py checks them against a real server.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import anyio
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from services.inference.feedback.served import (
    INDEX_KEY,
    MAX_PENDING_WRITES,
    AlreadyCorrected,
    FeedbackUnavailable,
    RedisServedLog,
    ServedMask,
    claim_key,
    entry_key,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def served(token: str = "r1", image: bytes = b"\xff\xd8\xff image", version: int = 3,
           caller: str = "web") -> ServedMask:
    return ServedMask(token, caller, f"req-{token}", "unet", version, image, "ab" * 32,
                      b"\x89PNG mask", False)


class RecordingRedis:
    """Records the keep script's calls; `gate` holds them until released (`blocked` tells when
    one waits there); GET reads `data`."""

    def __init__(self) -> None:
        self.kept: list[tuple[object, ...]] = []
        self.data: dict[str, bytes] = {}
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.blocked = asyncio.Event()
        """Set once a write waits at the gate."""

    async def eval(self, script: str, numkeys: int, *args: object) -> object:
        if self.gate is not None:
            self.blocked.set()
            await self.gate.wait()
        if self.error:
            raise self.error
        self.kept.append(args)
        key, record = str(args[0]), args[numkeys]
        assert isinstance(record, bytes)
        self.data[key] = record
        return 0

    def pipeline(self, transaction: bool = True) -> RecordingPipeline:
        return RecordingPipeline(self)

    async def get(self, key: str) -> bytes | None:
        if self.error:
            raise self.error
        return self.data.get(key)

    async def exists(self, key: str) -> int:
        if self.error:
            raise self.error
        return int(key in self.data)


class RecordingPipeline:
    """Queues evals as redis-py's pipeline does and runs them through the client on execute."""

    def __init__(self, client: RecordingRedis) -> None:
        self.client = client
        self.calls: list[tuple[str, int, tuple[object, ...]]] = []

    def eval(self, script: str, numkeys: int, *args: object) -> RecordingPipeline:
        self.calls.append((script, numkeys, args))
        return self

    async def execute(self, raise_on_error: bool = True) -> list[object]:
        return [await self.client.eval(script, numkeys, *args)
                for script, numkeys, args in self.calls]


def values(*draws: float) -> Iterator[float]:
    return iter(draws)


def make_log(client: RecordingRedis, *, rate: float = 1.0, max_entry_bytes: int = 10_000,
             draws: Iterator[float] | None = None, max_per_second: float = 0.0,
             clock: list[float] | None = None) -> RedisServedLog:
    sample = (lambda: next(draws)) if draws is not None else (lambda: 0.0)
    now = clock if clock is not None else [0.0]
    return RedisServedLog(client, sample_rate=rate, ttl_seconds=600, max_entries=50,  # type: ignore[arg-type]
                          max_entry_bytes=max_entry_bytes, retry_seconds=3600, sample=sample,
                          max_per_second=max_per_second, clock=lambda: now[0])


async def settle(log: RedisServedLog) -> None:
    await log.close()  # waits for the background writes


async def test_a_kept_answer_is_stored_under_its_token_with_ttl_and_bound():
    client = RecordingRedis()
    log = make_log(client)
    log.remember(served("abc"))
    await settle(log)
    ((key, index, record, ttl, max_entries),) = client.kept
    assert (key, index, ttl, max_entries) == (entry_key("abc"), INDEX_KEY, 600, 50)
    assert ServedMask.from_bytes(record) == served("abc")  # type: ignore[arg-type]


async def test_the_sample_rate_decides_which_answers_are_kept():
    client = RecordingRedis()
    log = make_log(client, rate=0.25, draws=values(0.1, 0.3, 0.24, 0.99, 0.25))
    for n in range(5):
        log.remember(served(f"r{n}"))
    await settle(log)
    assert [args[0] for args in client.kept] == [entry_key("r0"), entry_key("r2")]


async def test_the_rate_cap_keeps_a_burst_then_its_rate_and_no_more():
    client, clock = RecordingRedis(), [100.0]
    log = make_log(client, max_per_second=4.0, clock=clock)
    burst = [log.remember(served(f"b{n}")) for n in range(6)]
    assert burst == [True] * 4 + [False] * 2  # a second's worth, then nothing
    clock[0] += 0.5  # half a second refills two
    assert [log.remember(served(f"l{n}")) for n in range(3)] == [True, True, False]
    clock[0] += 60  # an idle minute refills one second's worth, not sixty
    assert sum(log.remember(served(f"i{n}")) for n in range(10)) == 4
    await settle(log)
    assert len(client.kept) == 10


async def test_a_zero_rate_keeps_nothing():
    client = RecordingRedis()
    log = make_log(client, rate=0.0)
    log.remember(served())
    await settle(log)
    assert client.kept == []


async def test_answers_above_the_entry_bound_are_not_kept():
    client = RecordingRedis()
    log = make_log(client, max_entry_bytes=2048)
    log.remember(served("small", image=b"x" * 1000))
    log.remember(served("large", image=b"x" * 3000))
    await settle(log)
    assert [args[0] for args in client.kept] == [entry_key("small")]


async def test_the_answer_does_not_wait_for_redis_but_feedback_does():
    client = RecordingRedis()
    client.gate = asyncio.Event()
    log = make_log(client)
    with anyio.fail_after(10):
        assert log.remember(served("slow"))  # returns while the write is blocked
    assert client.kept == []
    # the write is released only once the lookup is under way: a lookup that did not wait for
    # its entry would read Redis first and find nothing
    asyncio.get_running_loop().call_soon(client.gate.set)
    with anyio.fail_after(10):
        assert await log.find("slow", "web") == served("slow")


async def test_answers_queued_when_the_writer_is_cancelled_end_as_unknown_not_a_hang():
    client = RecordingRedis()
    client.gate = asyncio.Event()  # Redis never answers the first write
    log = make_log(client)
    assert log.remember(served("in-flight"))
    with anyio.fail_after(10):
        await client.blocked.wait()  # the writer took it and waits on Redis
    assert log.remember(served("queued"))  # waits for the next round trip
    writer = log._writer
    assert writer is not None
    writer.cancel()  # what the loop's shutdown does to a task still running
    with anyio.fail_after(10):
        assert await log.find("queued", "web") is None  # unknown: it was never kept
        assert await log.find("in-flight", "web") is None
    assert client.kept == []


async def test_close_stops_a_writer_that_outlives_its_grace_period(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.inference.feedback.served.CLOSE_TIMEOUT_SECONDS", 0.05)
    client = RecordingRedis()
    client.gate = asyncio.Event()
    log = make_log(client)
    assert log.remember(served("in-flight"))
    with anyio.fail_after(10):
        await client.blocked.wait()
    assert log.remember(served("queued"))
    with anyio.fail_after(10):
        await log.close()
        assert await log.find("queued", "web") is None
    assert log._writer is None


async def test_a_redis_failure_is_swallowed_and_redis_left_alone_for_a_while():
    client = RecordingRedis()
    client.error = RedisConnectionError("refused")
    log = make_log(client)
    log.remember(served("first"))
    await settle(log)
    client.error = None
    log.remember(served("during-bypass"))
    await settle(log)
    assert client.kept == []


async def test_lookups_tell_unknown_foreign_corrected_and_unavailable_apart():
    client = RecordingRedis()
    log = make_log(client)
    client.data[entry_key("mine")] = served("mine").to_bytes()
    assert await log.find("never-seen", "web") is None
    assert await log.find("mine", "someone-else") is None  # a stolen token is no use
    assert await log.find("mine", "web") == served("mine")
    client.data[claim_key(served("mine"))] = b"other-token"  # same answer, corrected before
    with pytest.raises(AlreadyCorrected):
        await log.find("mine", "web")
    client.error = RedisConnectionError("refused")
    with pytest.raises(FeedbackUnavailable) as raised:
        await log.find("anything", "web")
    assert raised.value.status == 503
    assert "refused" not in raised.value.detail



async def test_a_stalled_redis_cannot_pile_up_images_in_memory():
    client = RecordingRedis()
    client.gate = asyncio.Event()  # every write hangs
    log = make_log(client)
    for n in range(MAX_PENDING_WRITES + 5):
        log.remember(served(f"r{n}"))
    assert len(log._pending) == MAX_PENDING_WRITES
    client.gate.set()
    await settle(log)
    assert len(client.kept) == MAX_PENDING_WRITES
    log.remember(served("after"))  # still leaving Redis alone for retry_seconds
    await settle(log)
    assert len(client.kept) == MAX_PENDING_WRITES
