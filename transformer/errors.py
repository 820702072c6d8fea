"""Errors the public API answers with, each mapped to an HTTP status and a clear body."""

from __future__ import annotations

from .schemas import ErrorItem, ErrorResponse, RequestLimit


class ServiceError(Exception):
    """An error with an HTTP status, a one-line summary and optional per-pair items."""

    status_code = 500

    def __init__(self, detail: str, errors: list[ErrorItem] | None = None, *,
                 retry_after_s: int | None = None, log_detail: str | None = None,
                 limit: RequestLimit | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.retry_after_s = retry_after_s
        self.limit = limit  # the count limit a 413 names, as data (clients split by it)
        # What only the server log gets: internal hosts, addresses, gRPC details.
        self.log_detail = log_detail

    def body(self) -> dict[str, object]:
        """The answer: at most ``MAX_ERROR_ITEMS`` items, the detail saying how many more."""
        detail, errors = self.detail, self.errors
        if len(errors) > MAX_ERROR_ITEMS:
            detail = (f"{detail}; the first {MAX_ERROR_ITEMS} errors are listed, "
                      f"{len(errors) - MAX_ERROR_ITEMS} more left out")
            errors = errors[:MAX_ERROR_ITEMS]
        body = ErrorResponse(detail=detail, errors=errors, limit=self.limit).model_dump()
        if body["limit"] is None:  # only the count 413s carry it
            del body["limit"]
        for item, dumped in zip(errors, body["errors"], strict=True):
            for key in ("pair_id", "id"):
                if key not in item.model_fields_set:
                    del dumped[key]
        return body

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


class ModelChanged(ServiceError):
    """The answers of one request came from two model identities (a predictor replaced
    while it ran, or cached embeddings of the model before): its distances would mix two
    models. The route answers it once more from scratch; a second time, this 503."""

    status_code = 503


class BodyTimeout(ServiceError):
    """The request body did not arrive within ``BODY_READ_TIMEOUT``."""

    status_code = 408


class ClientGone(ServiceError):
    """The client disconnected before its request was read: nobody reads the answer (499
    is nginx's code for it, used here for the metrics and the log)."""

    status_code = 499


class RequestTimeout(ServiceError):
    """The request as a whole took longer than ``REQUEST_TIMEOUT``."""

    status_code = 504


class FetchBudgetExceeded(ServiceError):
    """The request's URL images together are over ``MAX_REQUEST_FETCH_MB``."""

    status_code = 413


MAX_ERROR_ITEMS = 50
"""Most error items in one answer: a small request must not buy a large answer."""
