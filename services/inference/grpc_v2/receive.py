"""Every gRPC call's request message, read by us under the body budget, after authentication.

grpcio reads a unary call's message before any handler runs, as far as
`grpc.max_receive_message_length` (`max_body_bytes`), and holds it until the call ends; its
only other bound is `grpc_max_concurrent_rpcs`. So 100 calls that each send all but the last
byte of a 16 MB message held 1.5 GB in the API, anonymous ones included (authentication ran
after the read), for as long as their senders liked. REST bodies have the body budget,
`MASKFLEET_BODY_TIMEOUT_SECONDS` and authentication before the body; this interceptor gives
gRPC the same three:

- it turns every method with one request message (unary-unary, unary-stream: the inference
  service and `grpc.health.v1`) into its request-streaming form, which grpcio starts before
  reading anything, and reads the one message itself (`context.read()`); on the wire a unary
  call and a one-message stream are the same, so clients see no difference;
- before reading, the inference service's calls are authenticated from their metadata
  (`authorize`), so an anonymous caller's message is never read in production;
- the read reserves `max_message_bytes` of the `BodyBudget` REST bodies also draw from (the
  size is unknown until the message is in), waiting for room at most `BUDGET_WAIT_SECONDS`
  (RESOURCE_EXHAUSTED with RetryInfo after, as REST's 503), must finish within
  `timeout_seconds` (DEADLINE_EXCEEDED, as REST's 408), and keeps only the message's real
  size reserved once it is in, until the call ends.
Calls ended here are counted in the request metrics like any other.
Until a call's read starts, its bytes wait in HTTP/2 flow control (one window per stream), not
in the API's memory.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import grpc

from shared.errors import InvalidRequest, MaskfleetError, RequestTimeout

from ..admission import BodyBudget
from ..metrics import ApiMetrics
from .servicer import REQUEST_ID_KEY, count_call, metadata_of, request_id_of
from .status import to_status

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
BUDGET_WAIT_SECONDS = 1.0
"""How long a call waits for room in the body budget. Reservations are the largest message,
held only while a message is read (a few microseconds once its bytes are in), so a burst of
calls waits milliseconds; waiting longer only means the budget is held by slow senders."""


class BoundedReceive(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Installed on the gRPC server (`.server`); `protected` names the service whose calls
    need a key (`authorize`, raising `Unauthenticated` / `Forbidden`), health stays open."""

    def __init__(self, budget: BodyBudget, metrics: ApiMetrics, *, max_message_bytes: int,
                 timeout_seconds: float, retry_after_seconds: int, protected: str,
                 authorize: Callable[[Mapping[str, str]], object] | None) -> None:
        self._budget = budget
        self._metrics = metrics
        self._max = max_message_bytes
        self._timeout = timeout_seconds
        self._retry_after = retry_after_seconds
        self._protected = f"/{protected}/"
        self._authorize = authorize

    async def intercept_service(self, continuation: Continuation,
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        check = (self._authorize if self._authorize is not None
                 and details.method.startswith(self._protected) else None)
        received = self._received
        if not handler.response_streaming:
            unary = handler.unary_unary

            async def one_answer(_: object, context: Context) -> Any:
                async with received(context, check, details.method) as request:
                    return await unary(request, context)

            return grpc.stream_unary_rpc_method_handler(
                one_answer, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        streaming = handler.unary_stream
        if inspect.isasyncgenfunction(streaming):
            async def answers(_: object, context: Context) -> AsyncIterator[Any]:
                async with received(context, check, details.method) as request:
                    async for answer in streaming(request, context):
                        yield answer
            behaviour: Callable[..., Any] = answers
        else:  # writes its answers with context.write
            async def writer(_: object, context: Context) -> None:
                async with received(context, check, details.method) as request:
                    await streaming(request, context)
            behaviour = writer
        return grpc.stream_stream_rpc_method_handler(
            behaviour, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    @asynccontextmanager
    async def _received(self, context: Context,
                        check: Callable[[Mapping[str, str]], object] | None, method: str,
                        ) -> AsyncIterator[Any]:
        """The call's one request message, read within the budget and the timeout."""
        started = time.perf_counter()
        held = 0
        metadata = metadata_of(context)
        try:
            try:
                if check is not None:
                    check(metadata)
                await self._budget.reserve(self._max,
                                           min(BUDGET_WAIT_SECONDS, self._wait(context)))
                held = self._max
                try:
                    request = await asyncio.wait_for(context.read(), self._wait(context))
                except TimeoutError:
                    raise RequestTimeout(f"the request message was not received within "
                                         f"{self._timeout:g} s") from None
                if request is grpc.aio.EOF:
                    raise InvalidRequest("the call ended without a request message")
                size = request.ByteSize() if hasattr(request, "ByteSize") else len(request)
                self._budget.give(held - size)
                held = size
            except MaskfleetError as error:
                count_call(self._metrics, method, error.status, started)
                answer = to_status(error, retry_after_seconds=self._retry_after)
                answer.trailing_metadata = (*answer.trailing_metadata,
                                            (REQUEST_ID_KEY, request_id_of(metadata)))
                await context.abort_with_status(answer)
                raise  # abort_with_status raises; this keeps type checkers honest
            yield request
        finally:
            self._budget.give(held)

    def _wait(self, context: Context) -> float:
        """The timeout, or less when the call's own deadline comes first."""
        remaining = context.time_remaining()
        return self._timeout if remaining is None else max(0.0, min(self._timeout, remaining))
