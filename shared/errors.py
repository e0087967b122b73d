"""One error hierarchy for every maskfleet process.

Each error carries the HTTP status and a stable machine-readable code, so the API's single
problem+json handler, the worker's per-item error records and the CLIs all speak the same
vocabulary.
"""

from __future__ import annotations


class MaskfleetError(Exception):
    """Base of every error maskfleet raises on purpose."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal error"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = clip(detail or self.title)
        super().__init__(self.detail)

    @property
    def headers(self) -> dict[str, str]:
        """Response headers the status needs (WWW-Authenticate on 401, Retry-After on 429)."""
        return {}


MAX_DETAIL_CHARS = 1024
"""Details echo input (paths, messages of libraries): bounded so that a hostile value can
neither bloat an answer nor write a 400 MB log line."""


def clip(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


class InvalidInput(MaskfleetError):
    status = 400
    code = "invalid_input"
    title = "Invalid input"


class EmptyBody(InvalidInput):
    code = "empty_body"
    title = "The request body is empty"


class InvalidImage(InvalidInput):
    status = 422
    code = "invalid_image"
    title = "The body is not a decodable image"


class InvalidMask(InvalidInput):
    status = 422
    code = "invalid_mask"
    title = "The mask is not a valid trimap"


class UnsupportedMediaType(InvalidInput):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class MalformedMultipart(InvalidInput):
    code = "malformed_multipart"
    title = "The multipart body cannot be parsed"


class MissingImage(InvalidInput):
    code = "missing_image"
    title = "The multipart body has no `image` file field"


class InvalidRequest(InvalidInput):
    """Parameters or body fields that fail validation (FastAPI's RequestValidationError)."""

    status = 422
    code = "invalid_request"
    title = "The request is invalid"


class InvalidInferenceRequest(InvalidInput):
    """An Open Inference Protocol v2 body that is not valid JSON or breaks the tensor rules."""

    code = "invalid_inference_request"
    title = "Malformed inference request"


class PayloadTooLarge(InvalidInput):
    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class TooManyPixels(PayloadTooLarge):
    code = "too_many_pixels"
    title = "The image has too many pixels"


class Unauthenticated(MaskfleetError):
    """No credentials, or credentials no key matches (RFC 6750: answer with a challenge)."""

    status = 401
    code = "unauthenticated"
    title = "An API key is required"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="maskfleet"'}


class Forbidden(MaskfleetError):
    """A known caller asking for something their key's scopes do not cover."""

    status = 403
    code = "forbidden"
    title = "The API key lacks the scope this call needs"


class RateLimited(MaskfleetError):
    """Too many feedback or job submissions from one key; try again after `retry_after`."""

    status = 429
    code = "rate_limited"
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = max(1, retry_after)

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class StorageNotAllowed(MaskfleetError):
    """A job URI outside what the storage confinement rules allow (the rule is in `code`)."""

    status = 403
    code = "storage_not_allowed"
    title = "The job may not touch that storage location"


class NotFound(MaskfleetError):
    status = 404
    code = "not_found"
    title = "Not found"


class ModelNotFound(NotFound):
    code = "model_not_found"
    title = "Unknown model"


class VersionNotFound(NotFound):
    code = "version_not_found"
    title = "Unknown model version"


class StageNotServed(NotFound):
    """`/v1/segment?stage=` names a stage this API instance does not serve."""

    code = "stage_not_served"
    title = "This API does not serve that stage"


class JobNotFinished(MaskfleetError):
    """A job's outputs are read through its manifest, which exists once the job succeeded."""

    status = 409
    code = "job_not_finished"
    title = "The job has no manifest yet"


class JobNotFound(NotFound):
    code = "job_not_found"
    title = "Unknown job"


class InvalidJob(InvalidInput):
    """A batch job that cannot run as asked: bad URIs, colliding outputs, bad chunk size."""

    status = 422
    code = "invalid_job"
    title = "The batch job request is invalid"


class NoImagesFound(InvalidJob):
    code = "no_images"
    title = "No JPEG or PNG images at the job's input"


class JobTooLarge(InvalidJob):
    status = 413
    code = "job_too_large"
    title = "The job names more images than allowed"


class OutputInUse(InvalidJob):
    status = 409
    code = "output_in_use"
    title = "Another unfinished job writes to that output"


class JobsUnavailable(MaskfleetError):
    """Batch jobs need Redis; without it the API still serves live requests."""

    status = 503
    code = "jobs_unavailable"
    title = "Batch jobs are unavailable"


class RouteNotFound(NotFound):
    code = "route_not_found"
    title = "No such endpoint"


class MethodNotAllowed(MaskfleetError):
    status = 405
    code = "method_not_allowed"
    title = "Method not allowed"


class PublishConflict(MaskfleetError):
    """Other publishers kept taking the next version number (see shared/repository.py)."""

    status = 409
    code = "publish_conflict"
    title = "Could not claim a version number"


class ModelNotReady(MaskfleetError):
    status = 503
    code = "model_not_ready"
    title = "The model is not loaded yet"


class Overloaded(MaskfleetError):
    """Load shedding: a bounded queue is full, so the request is refused at once (503 with
    Retry-After) instead of waiting behind work the server cannot finish in time."""

    status = 503
    code = "overloaded"
    title = "The server is at capacity"
    retry_after: int = 1


class DeadlineExceeded(MaskfleetError):
    """The request's deadline passed before its work finished; queued work was dropped."""

    status = 504
    code = "deadline_exceeded"
    title = "The request deadline passed"


class HeaderTooLarge(InvalidInput):
    status = 431
    code = "header_too_large"
    title = "Request header fields too large"


class RequestTimeout(InvalidInput):
    """The client sent its request head or body too slowly."""

    status = 408
    code = "request_timeout"
    title = "The request was not received in time"

class Draining(MaskfleetError):
    """The pod is shutting down: readiness fails so load balancers stop sending new requests,
    while requests that still arrive are served until SIGTERM."""

    status = 503
    code = "draining"
    title = "The server is shutting down"


class InvalidStorageUri(InvalidInput):
    """A URI no storage backend can use (a local path too long or malformed)."""

    status = 422
    code = "invalid_uri"
    title = "The storage URI cannot be used"


class StorageError(MaskfleetError):
    """Storage failed in a way that may pass (network, credentials refresh, throttling):
    the API answers 502 and the worker retries."""

    status = 502
    code = "storage_error"
    title = "Storage failed"


class StorageUnavailable(StorageError):
    """Storage (or its credentials endpoint) cannot be reached right now."""

    status = 503
    code = "storage_unavailable"
    title = "Storage is unavailable"


class ObjectNotFound(StorageError):
    status = 404
    code = "object_not_found"
    title = "No object at that URI"


class ConfigError(MaskfleetError):
    status = 400
    code = "config_error"
    title = "Invalid configuration"


class GateRejected(MaskfleetError):
    """The quality gate refused to publish a trained model."""

    status = 409
    code = "gate_rejected"
    title = "The model did not pass the quality gate"


class OutsideFolder(StorageNotAllowed):
    """A local write or read that would leave the folder it is confined to: a symlink on the
    way, or the folder itself swapped for one after it was checked. Only a check made while
    the file is opened (on the folder's descriptor) holds against such a swap."""

    code = "outside_folder"
    title = "The path leads outside the folder it must stay in"


class NotAFile(InvalidStorageUri):
    """A local path naming a FIFO, device or socket: reading one can block forever or never
    end, so it is refused before a byte is read."""

    code = "not_a_file"
    title = "The path is not a regular file"
