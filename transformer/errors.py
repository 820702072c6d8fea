"""Errors the public API answers with, each mapped to an HTTP status and a clear body."""

from __future__ import annotations

from .schemas import ErrorItem, ErrorResponse


class ServiceError(Exception):
    """An error with an HTTP status, a one-line summary and optional per-pair items."""

    status_code = 500

    def __init__(self, detail: str, errors: list[ErrorItem] | None = None, *,
                 retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, object]:
        return ErrorResponse(detail=self.detail, errors=self.errors).model_dump()

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s else {}


class BadRequest(ServiceError):
    """The body is not JSON or not a valid request (before any work is done)."""

    status_code = 422


class TooManyPairs(ServiceError):
    status_code = 413


class TooManyImages(ServiceError):
    """More images in one ``/embed`` request than MAX_IMAGES_PER_REQUEST."""

    status_code = 413


class BodyTooLarge(ServiceError):
    status_code = 413


class Overloaded(ServiceError):
    """More requests in flight and waiting than configured: come back shortly."""

    status_code = 429


class QueueTimeout(ServiceError):
    """Waited too long for a processing slot."""

    status_code = 503


class ImageErrors(ServiceError):
    """One or more images could not be used; ``errors`` lists every one."""

    status_code = 422


class PredictorUnavailable(ServiceError):
    """The predictor cannot be reached or is not ready (yet)."""

    status_code = 503


class PredictorTimeout(ServiceError):
    status_code = 504


class PredictorFailed(ServiceError):
    """The predictor answered, but with an error or an answer that makes no sense."""

    status_code = 502
