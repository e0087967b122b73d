"""Where feedback finds an answer: the Redis log first, then the answers kept durably.

The Redis log (served.py) answers fast and is shared by every pod, but keeps answers for
seconds under load; `KeptAnswers` (kept.py) keeps the answers asked for, in storage, for days.
One correction per answer holds across both: the claim is the Redis log's, on (model, version,
image digest), wherever the answer was found.
"""

from __future__ import annotations

import weakref

from .kept import KeptAnswers
from .served import RedisServedLog, ServedMask


class ServedAnswers:
    """`ServedEntries` over both stores, for `Feedback`."""

    def __init__(self, log: RedisServedLog, kept: KeptAnswers) -> None:
        self._log = log
        self._kept = kept
        self._durable: weakref.WeakValueDictionary[int, ServedMask] = (
            weakref.WeakValueDictionary())
        """Answers being corrected that were found only in storage, by identity; an entry
        goes with its answer object, so nothing accumulates."""

    async def find(self, token: str, caller: str) -> ServedMask | None:
        served = await self._log.find(token, caller)
        if served is not None:
            return served
        served = await self._kept.find(token, caller)
        if served is not None:
            await self._log.refuse_corrected(served)
            self._durable[id(served)] = served
        return served

    async def claim(self, served: ServedMask) -> None:
        durable = self._durable.get(id(served)) is served
        await self._log.claim(served, kept_here=not durable)

    async def release(self, served: ServedMask) -> None:
        await self._log.release(served)
