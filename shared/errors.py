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
        self.detail = detail or self.title
        super().__init__(self.detail)


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


class PayloadTooLarge(InvalidInput):
    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class TooManyPixels(PayloadTooLarge):
    code = "too_many_pixels"
    title = "The image has too many pixels"


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


class JobNotFound(NotFound):
    code = "job_not_found"
    title = "Unknown job"


class ModelNotReady(MaskfleetError):
    status = 503
    code = "model_not_ready"
    title = "The model is not loaded yet"


class StorageError(MaskfleetError):
    status = 502
    code = "storage_error"
    title = "Storage failed"


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
