"""The Open Inference Protocol v2 data plane: metadata, readiness and inference, no transport.

REST (`routes/v2.py`) and gRPC (`grpc/servicer.py`) are thin translations of this one module,
as MLServer's `handlers/dataplane.py` serves both of its servers: a request arrives as typed
data (tensors, parameters, deadline, request id, caller identity), leaves as typed data or as
one of `shared.errors`, and each transport maps those errors in one place. So both transports
answer the same calls with the same tensors, and enforce the same limits: the tensor rules and
pixel budgets (`oip`), the pixel budget in flight, the bounded queues and the deadline
(`admission`, `pipeline`).

One model is served: `MASKFLEET_MODEL_NAME` at the version currently loaded. Other names, and
versions other than the loaded one, are `NotFound`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, TypeVar

from shared.errors import ModelNotFound, ModelNotReady, NotFound, VersionNotFound
from shared.model.runtime import SAVEDMODEL

from .admission import Deadline, oip_timeout
from .model_holder import ModelHolder, ServedModel
from .oip import (
    BYTES,
    MASK,
    MASK_PNG,
    UINT8,
    Budget,
    InferInput,
    OutputTensor,
    check_budget,
    output_tensors,
)
from .pipeline import MaskBatch, Segmenter
from .settings import InferenceSettings

T = TypeVar("T")

SERVER_NAME = "maskfleet"
EXTENSIONS = ("binary_tensor_data",)
PLATFORMS = {SAVEDMODEL: "tensorflow_savedmodel"}
"""KServe platform names by variant; every other variant is an OpenVINO IR build."""
OPENVINO_PLATFORM = "openvino_ir"


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]
    parameters: dict[str, Any] = field(default_factory=dict)
    """Extra facts (stage, input size); REST shows them, the gRPC message has no such field."""


INPUTS = (TensorMetadata("images", UINT8, (-1, -1, -1, 3)),
          TensorMetadata("image_bytes", BYTES, (-1,)))
OUTPUTS = (TensorMetadata(MASK, UINT8, (-1, -1, -1)),
           TensorMetadata(MASK_PNG, BYTES, (-1,)))


@dataclass(frozen=True)
class InferRequest:
    """One inference call, as any transport received it."""

    model: str
    version: str | None
    """A version the caller insists on; None for whichever is loaded."""
    input: InferInput
    """The validated tensor, its parameters and the requested outputs (`oip.to_input`)."""
    deadline: Deadline
    """The earliest of the server's limit and the caller's (header, gRPC deadline)."""
    request_id: str
    """Echoed as the answer's id unless the request named its own."""
    caller: str | None = None
    """Who is calling (the API key's name once authenticated), for logs and answers."""


@dataclass(frozen=True)
class InferResponse:
    model: str
    version: int
    id: str
    outputs: list[OutputTensor]
    binary: dict[str, bool]
    """Output name -> the caller asked for it as binary data (REST's extension)."""
    variant: str = SAVEDMODEL
    """The runtime build that answered (`X-Model-Version: <version>/<variant>`)."""


def server_version() -> str:
    try:
        return metadata.version("maskfleet")
    except metadata.PackageNotFoundError:
        return "0"


class DataPlane:
    def __init__(self, settings: InferenceSettings, holder: ModelHolder,
                 segmenter: Segmenter) -> None:
        self._settings = settings
        self._holder = holder
        self._segmenter = segmenter
        self.budget = Budget(image_pixels=settings.max_pixels,
                             request_pixels=settings.max_request_pixels,
                             mask_pixels=settings.max_mask_output_pixels,
                             json_mask_pixels=settings.max_json_mask_pixels)
        self.max_images = settings.max_images_per_request
        self.max_request_bytes = settings.max_body_bytes

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, server_version(), EXTENSIONS)

    def live(self) -> bool:
        """The process answers: nothing more is needed to be live."""
        return True

    def require_ready(self) -> ServedModel:
        """The loaded model, or `ModelNotReady` while it loads."""
        return self._holder.require()

    def ready(self) -> bool:
        try:
            self._holder.require()
        except ModelNotReady:
            return False
        return True

    def served(self, name: str, version: str | None) -> ServedModel:
        """The model a call names, or `ModelNotFound` / `VersionNotFound` / `ModelNotReady`."""
        if name != self._settings.model_name:
            raise ModelNotFound(f"unknown model {name!r}; this server serves "
                                f"{self._settings.model_name!r}")
        served = self._holder.require()
        if version and version != str(served.version):
            raise VersionNotFound(f"{name} version {version} is not loaded here; "
                                  f"version {served.version} is")
        return served

    def model_metadata(self, name: str, version: str | None) -> ModelMetadata:
        served = self.served(name, version)
        return ModelMetadata(
            name=served.name, versions=(str(served.version),),
            platform=PLATFORMS.get(served.variant, OPENVINO_PLATFORM),
            inputs=INPUTS, outputs=OUTPUTS,
            parameters={"stage": served.stage, "input_size": served.input_size,
                        "variant": served.variant,
                        "note": "send exactly one input: UINT8 pixels or BYTES encoded images"})

    def model_ready(self, name: str, version: str | None) -> bool:
        """True when the named model (and version) is loaded; False while it loads and for
        models and versions this server does not serve (Triton answers `ready: false` there;
        REST's route uses `served` and answers 404, as tritonclient.http expects)."""
        try:
            self.served(name, version)
        except (ModelNotReady, NotFound):
            return False
        return True

    def deadline(self, caller_seconds: float | None = None) -> Deadline:
        """The server's request deadline, shortened (never extended) by the caller's."""
        return Deadline.within(self._settings.request_timeout_seconds).tightened(caller_seconds)

    async def decode(self, fn: Callable[..., InferInput], *args: Any,
                     deadline: Deadline) -> InferInput:
        """Run a transport's parser on the bounded codec pool with the request limits.

        Parsing a large request costs as much as decoding an image, so it is not done on the
        event loop; `fn` gets `max_images` and `budget` as keywords (`oip.to_input` needs them).
        The wait for a codec thread is bounded by the deadline like every later wait: a request
        queued behind long decodes ends with 504 when its deadline passes, not when a thread
        frees up, and its parse never runs.
        """
        async with self._segmenter.within(deadline):
            return await self._segmenter.codec(fn, *args, deadline=deadline,
                                               max_images=self.max_images, budget=self.budget)

    async def infer(self, request: InferRequest, render: Callable[[InferResponse], T]) -> T:
        """Masks for the request's images, handed to the transport's `render`.

        The masks and `render` (building the REST body or the gRPC message) run as one job on
        the codec pool while the request still holds its pixels in the budget and within its
        deadline: building and serialising masks costs as much as decoding images and its
        memory scales with them.
        """
        self.served(request.model, request.version)
        parsed = request.input
        deadline = request.deadline.tightened(oip_timeout(parsed.parameters))
        segmenter = self._segmenter
        async with segmenter.within(deadline):
            if parsed.pixels is not None:
                n, height, width = parsed.pixels.shape[:3]
                with segmenter.admit(n * height * width):
                    batch = await segmenter.segment_pixels(parsed.pixels, deadline)
                    return await self._answer(request, batch, deadline, render)
            assert parsed.encoded is not None
            images = await segmenter.probe(parsed.encoded, deadline)
            total = check_budget([i.size for i in images], parsed.outputs, self.budget)
            with segmenter.admit(total):
                batch = await segmenter.segment_encoded(parsed.encoded, images, deadline)
                return await self._answer(request, batch, deadline, render)

    async def _answer(self, request: InferRequest, batch: MaskBatch, deadline: Deadline,
                      render: Callable[[InferResponse], T]) -> T:
        if request.version and request.version != str(batch.version):
            raise VersionNotFound(f"version {request.version} was replaced by {batch.version} "
                                  "while the request ran")
        parsed = request.input
        return await self._segmenter.codec(
            _render, render, batch, parsed.id or request.request_id, parsed.outputs,
            deadline=deadline)


def _render(render: Callable[[InferResponse], T], batch: MaskBatch, answer_id: str,
            outputs: dict[str, bool]) -> T:
    tensors = output_tensors(batch.masks(), list(outputs))
    return render(InferResponse(batch.model, batch.version, answer_id, tensors, outputs,
                                batch.variant))
