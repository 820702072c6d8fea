"""OpenAI-compatible embeddings of images: ``POST /v1/embeddings`` and ``GET /v1/models``.

The request and answer follow OpenAI's embeddings API (``openai.embeddings.create``), with
images where OpenAI takes text: ``input`` is one image or a list of them, each a URL, a
data URI or raw base64, exactly as in ``POST /embed``. The route is ``/embed`` in another
shape: the translation here is pure, and ``transformer.routes`` serves it through the
same code path as ``/embed`` (admission, body limits, ``MAX_IMAGES_PER_REQUEST`` counted
before anything is validated, deduplication, the embedding cache, the same errors and
statuses, metrics, the access log); only the bodies differ (its request kind:
``transformer.requests.OpenAIEmbeddings``). Errors are in OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, so that OpenAI clients raise them as
their own exceptions with our message.

Why not KServe 0.21's OpenAI data plane (``kserve.protocol.rest.openai``, whose
``OpenAIEncoderModel.create_embedding`` it routes to):

- It does not load here: its endpoints and types import vLLM
  (``vllm.entrypoints...``), which the transformer does not install (a CUDA inference
  engine of several GB); without it KServe logs "OpenAI endpoints not registered".
- Its routes live under ``/openai/v1/...`` (``KSERVE_OPENAI_ROUTE_PREFIX``), not at the
  conventional ``/v1/embeddings`` that OpenAI clients call under a ``.../v1`` base URL.
- FastAPI reads and validates its body itself: no ``MAX_REQUEST_BODY_MB`` check before
  reading, no ``BODY_READ_TIMEOUT``, no pod-wide body budget, no admission ticket or slot,
  no count of the inputs before validation; a body that fails validation is FastAPI's 422
  ``{"detail": [...]}`` and a model that is not ready KServe's ``{"error": "..."}``, not
  OpenAI's error shape.
- Its request type is vLLM's text embedding request (strings or token ids with
  tokenizer options), and the model must be an ``OpenAIEncoderModel``, a
  ``BaseKServeModel`` without the ``preprocess``/``predict``/``postprocess`` pipeline
  that decodes, deduplicates, caches and sends the images to the predictor.

Usage: OpenAI counts tokens; an image is not made of tokens, so ``usage`` counts images:
``prompt_tokens`` and ``total_tokens`` are both the number of inputs in the request (each
repeat and each cached image counted), a figure a client can budget with and that does not
depend on what the cache held.

Model: the one served is the DreamSim variant the predictor runs (``dino_vitb16``, ...),
listed by ``GET /v1/models`` with its embedding size; ``model`` must name it (another name
is a 404, ``model_not_found``: embeddings of different variants are not comparable).
``dimensions`` may be given only as the variant's own size: a truncated DreamSim vector is
not the one the distance is computed on.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from .embeddings import RenderedList
from .errors import MAX_ERROR_ITEMS, BadRequest, ServiceError, TooManyImages
from .schemas import EmbedImage, EmbedRequest, ErrorItem

EMBEDDINGS_PATH = "/v1/embeddings"
MODELS_PATH = "/v1/models"
OWNER = "image-similarity-service"
STARTED = int(time.time())  # the model list's ``created``: when this transformer started


class ModelNotFound(ServiceError):
    """``model`` names a model this service does not serve (OpenAI answers 404 too)."""

    status_code = 404


# --- request and answer bodies ---------------------------------------------------------------

class OpenAIEmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``: OpenAI's embeddings request, with images as ``input``."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr = Field(description="the DreamSim variant, as GET /v1/models lists it")
    input: StrictStr | list[StrictStr] = Field(
        description="one image or a list of them: base64, data URI or http(s) URL each")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: a list of numbers; base64: the little-endian float32 "
                             "bytes of the vector, base64-encoded")
    dimensions: StrictInt | None = Field(
        None, description="if given, the variant's embedding size (no truncation)")
    user: StrictStr | None = Field(None, description="accepted and ignored")


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int = Field(description="position of the image in 'input'")
    embedding: list[float] | str = Field(
        description="the normalised DreamSim embedding, as in POST /embed")


class OpenAIUsage(BaseModel):
    prompt_tokens: int = Field(description="images in the request")
    total_tokens: int = Field(description="images in the request")


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding] = Field(description="one per input, in request order")
    model: str = Field(description="the DreamSim variant that computed them")
    usage: OpenAIUsage


class OpenAIModel(BaseModel):
    id: str = Field(description="the DreamSim variant: the 'model' of /v1/embeddings")
    object: Literal["model"] = "model"
    created: int = Field(description="when this transformer started (Unix seconds)")
    owned_by: str = OWNER
    dim: int = Field(description="length of each embedding")
    max_images_per_request: int = Field(description="most inputs in one request")


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class OpenAIError(BaseModel):
    message: str = Field(description="what was wrong: each failing input, field and reason")
    type: str = Field(description="invalid_request_error, rate_limit_error or server_error")
    param: str | None = Field(description="the field at fault, e.g. 'model' or 'input[2]'")
    code: str = Field(description="the kind of error: model_not_found, too_many_images, "
                                  "image_errors, overloaded, ...")
    errors: list[ErrorItem] = Field(default_factory=list, description=(
        "every failing input (index, field, reason), as POST /embed lists them"))


class OpenAIErrorResponse(BaseModel):
    error: OpenAIError


# --- translation -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ParsedEmbeddings:
    """A valid ``/v1/embeddings`` request: the ``/embed`` request it is, and what only the
    OpenAI shape carries."""

    embed: EmbedRequest
    model: str
    dimensions: int | None


def parse(body: Any, *, limit: int) -> ParsedEmbeddings:
    """Validate a ``/v1/embeddings`` body (nothing is fetched or decoded before this).

    The inputs are counted against ``limit`` (``MAX_IMAGES_PER_REQUEST``) before anything
    is validated, as ``/embed``'s images are.

    Raises:
        TooManyImages: more inputs than ``limit`` (413).
        BadRequest: not the schema; the items name each field (``input[3]``) and why (422).
    """
    if isinstance(body, dict):
        entries = body.get("input")
        if isinstance(entries, list) and len(entries) > limit:
            raise too_many(len(entries), limit)
    try:
        request = OpenAIEmbeddingRequest.model_validate(body)
    except ValidationError as e:
        items = _validation_items(e, body)
        detail = "the request body does not match the API"
        if any(item.index is not None for item in items):
            detail += ("; each input must be a string: an image as base64, a data URI or "
                       "an http(s) URL (token arrays are text, not images)")
        raise BadRequest(detail, items) from None
    inputs = [request.input] if isinstance(request.input, str) else request.input
    if len(inputs) > limit:
        raise too_many(len(inputs), limit)
    return ParsedEmbeddings(
        embed=EmbedRequest(images=[EmbedImage(image=x) for x in inputs],
                           encoding=request.encoding_format),
        model=request.model, dimensions=request.dimensions)


def too_many(count: int, limit: int) -> TooManyImages:
    return TooManyImages(f"{count} inputs in one request; the limit is {limit} "
                         "(MAX_IMAGES_PER_REQUEST): split the request",
                         [ErrorItem(field="input", reason=f"{count} > {limit}")])


def _validation_items(error: ValidationError, body: Any) -> list[ErrorItem]:
    """One item per schema error: ``input[i]`` errors carry the index ``i``. The union
    ``str | list[str]`` reports each failure under both branches: only the list branch's
    is kept for a list (and only the string branch's for anything else)."""
    is_list = isinstance(body, dict) and isinstance(body.get("input"), list)
    items: list[ErrorItem] = []
    for err in error.errors(include_url=False):
        loc = list(err["loc"])
        if loc and loc[0] == "input" and len(loc) >= 2 and isinstance(loc[1], str):
            branch = loc.pop(1)  # "str" or "list[str]"
            if (branch == "list[str]") != is_list:
                continue
        index = loc[1] if len(loc) >= 2 and loc[0] == "input" and isinstance(loc[1], int) \
            else None
        field = "input" if index is not None else (
            ".".join(str(p) for p in loc) or "body")
        reason = err["msg"]
        if index is not None and err["type"] == "string_type":
            reason = f"must be a string, not {type(body['input'][index]).__name__}"
        elif loc == ["input"] and not is_list:
            reason = "must be an image (a string) or a list of them"
        items.append(ErrorItem(index=index, field=field, reason=reason))
    return items


def check_model(parsed: ParsedEmbeddings, *, model_type: str, dim: int) -> None:
    """Refuse a ``model`` other than the variant served, and a ``dimensions`` other than
    its size, before any image is touched."""
    if parsed.model != model_type:
        raise ModelNotFound(
            f"the model {parsed.model[:100]!r} is not served here: this service serves "
            f"{model_type!r} (GET {MODELS_PATH})",
            [ErrorItem(field="model", reason=f"not {model_type!r}")])
    if parsed.dimensions is not None and parsed.dimensions != dim:
        raise BadRequest(
            f"dimensions={parsed.dimensions}: {model_type} embeddings have {dim} dimensions "
            "and are not truncated (the DreamSim distance is computed on the whole vector)",
            [ErrorItem(field="dimensions", reason=f"{parsed.dimensions} != {dim}")])


def answer(result: dict[str, Any], *, inputs: int) -> dict[str, Any]:
    """The OpenAI answer for an ``/embed`` result (``embeddings``, ``model_type``).

    ``/embed`` renders its list to JSON text off the event loop (``RenderedList``); this
    route reshapes each item, so it reads that text back first.
    """
    embeddings = result["embeddings"]
    if isinstance(embeddings, RenderedList):
        embeddings = json.loads(embeddings.text)
    return OpenAIEmbeddingResponse(
        data=[OpenAIEmbedding(index=i, embedding=e["embedding"])
              for i, e in enumerate(embeddings)],
        model=result["model_type"],
        usage=OpenAIUsage(prompt_tokens=inputs, total_tokens=inputs),
    ).model_dump()


def model_list(*, model_type: str, dim: int, max_images: int) -> dict[str, Any]:
    """``GET /v1/models``: the one variant served."""
    return OpenAIModelList(data=[OpenAIModel(
        id=model_type, created=STARTED, dim=dim, max_images_per_request=max_images,
    )]).model_dump()


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def _code(error: ServiceError) -> str:
    """``ModelNotFound`` -> ``model_not_found``: the error class, as OpenAI's codes read."""
    name = type(error).__name__ if type(error) is not ServiceError else "internal_error"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _param(item: ErrorItem) -> str:
    """The field an item is about, as OpenAI names parameters: ``input[2]``, ``model``."""
    if item.index is not None:
        return f"input[{item.index}]"
    return "input" if item.field == "image" else item.field


def error_body(error: ServiceError) -> dict[str, Any]:
    """A service error in OpenAI's shape; the message names each failing input.

    The message is ``/embed``'s summary followed by ``input[i]: reason`` for each item
    (the items ``ServiceError.body`` keeps, at most ``MAX_ERROR_ITEMS``), ``param`` the
    first item's field, ``errors`` the items themselves (with ``field`` ``input`` where
    ``/embed`` says ``image``).
    """
    items = [item.model_copy(update={"field": "input"} if item.field == "image" else {})
             for item in error.errors[:MAX_ERROR_ITEMS]]
    message = str(error.body()["detail"])  # with how many items were left out
    if items:
        message += ": " + "; ".join(f"{_param(i)}: {i.reason}" for i in items)
    return OpenAIErrorResponse(error=OpenAIError(
        message=message, type=_error_type(error.status_code),
        param=_param(items[0]) if items else None, code=_code(error), errors=items,
    )).model_dump(exclude={"error": {"errors": {"__all__": {"pair_id", "id"}}}})
