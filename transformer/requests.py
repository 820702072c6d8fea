"""Request bodies to validated requests, each carrying its kind (``/similarity`` pairs,
``/embed`` images, OpenAI's ``/v1/embeddings``).

A body is parsed once, on arrival (``RequestKind.parse``, called by ``routes.admit``), into
a :class:`Parsed` request: the validated request and the small strategy of its kind,
which knows how to validate it, plan its distinct images (``plan_pairs``/``plan_images``),
name its id field in error items, and render its answer. The model pipeline
(``transformer.server``) asks the kind rather than the request's type.

Validation counts the pairs (or images) before anything is validated: a small body of many
empty pairs must not buy one error item (and its memory and CPU) per pair. Nothing is
decoded or fetched before validation passes.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from . import openai_api
from .embeddings import ImagePlan, plan_images, render_embeddings
from .errors import BadRequest, ServiceError, TooManyImages, TooManyPairs
from .schemas import (
    MAX_PAIR_ID_LENGTH,
    EmbedImage,
    EmbedRequest,
    ErrorItem,
    ImagePair,
    PairId,
    RequestLimit,
    SimilarityRequest,
)
from .scoring import PairPlan, plan_pairs, score_pairs
from .settings import TransformerSettings
from .unknown_fields import unknown_fields

R = TypeVar("R")
Plan = PairPlan | ImagePlan
ModelInfo = Callable[[], Awaitable[dict[str, Any]]]
"""The predictor's variant and embedding size (``SimilarityTransformer._model_info``)."""


# --- validation -----------------------------------------------------------------------------

def too_many(count: int, limit: int, what: str, setting: str,
             error: type[ServiceError]) -> ServiceError:
    return error(f"{count} {what} in one request; the limit is {limit} "
                 f"({setting}): split the request",
                 [ErrorItem(field=what, reason=f"{count} > {limit}")],
                 limit=RequestLimit(setting=setting, value=limit))


_Request = TypeVar("_Request", SimilarityRequest, EmbedRequest)


def validated(body: Any, model: type[_Request], key: str, id_field: str, limit: int,
              setting: str, error: type[ServiceError]) -> _Request:
    """``body`` as ``model``: ``body[key]`` counted against ``limit`` first, then validated
    (error items name ``id_field``), then counted again. The fields it carried that the
    API does not know become the answer's ``warnings``."""
    count_first(body, key, limit, setting, error)
    try:
        request = model.model_validate(body)
    except ValidationError as e:
        raise BadRequest("the request body does not match the API",
                         validation_items(e, body, key, id_field)) from None
    request._warnings = unknown_fields(body, model, key, _ITEM_MODELS[model])
    count = len(getattr(request, key))
    if count > limit:
        raise too_many(count, limit, key, setting, error)
    return request


def validate_similarity(body: Any, *, limit: int) -> SimilarityRequest:
    """A ``/similarity`` body as a request (``limit``: ``MAX_PAIRS_PER_REQUEST``).

    Raises:
        TooManyPairs: more pairs than ``limit`` (413), counted before validation.
        BadRequest: not the schema; each item names the pair and field (422).
    """
    return validated(body, SimilarityRequest, "pairs", "pair_id", limit,
                     "MAX_PAIRS_PER_REQUEST", TooManyPairs)


def validate_embed(body: Any, *, limit: int) -> EmbedRequest:
    """An ``/embed`` body as a request (``limit``: ``MAX_IMAGES_PER_REQUEST``); the images
    are counted first, as the pairs are."""
    return validated(body, EmbedRequest, "images", "id", limit, "MAX_IMAGES_PER_REQUEST",
                     TooManyImages)


_ITEM_MODELS: dict[type[BaseModel], type[BaseModel]] = {
    SimilarityRequest: ImagePair, EmbedRequest: EmbedImage}
# What a body and each of its items must look like, for the answer when one is not an
# object at all (pydantic would name the internal class: "instance of EmbedImage").
_SHAPES = {
    "body": {"pairs": 'a JSON object: {"pairs": [{"reference_image": ..., '
                      '"generated_image": ..., "pair_id": optional}, ...]}',
             "images": 'a JSON object: {"images": [{"image": ..., "id": optional}, ...], '
                       '"encoding": optional}'},
    "item": {"pairs": 'each pair must be an object: {"reference_image": "<base64, data URI '
                      'or URL>", "generated_image": "<...>", "pair_id": optional}',
             "images": 'each image must be an object: {"image": "<base64, data URI or '
                       'URL>", "id": optional}'},
}
_NOT_AN_OBJECT = frozenset(("model_type", "model_attributes_type", "dict_type"))


def count_first(body: Any, key: str, limit: int, setting: str,
                error: type[ServiceError]) -> None:
    """Refuse a body whose ``body[key]`` list is over ``limit`` before validating it."""
    entries = body.get(key) if isinstance(body, dict) else None
    if isinstance(entries, list) and len(entries) > limit:
        raise too_many(len(entries), limit, key, setting, error)


def validation_items(error: ValidationError, body: Any, list_key: str,
                     id_key: str) -> list[ErrorItem]:
    """Error items of a body that failed validation: per item of ``body[list_key]`` (pairs
    or images), its index and (when it is echoable) its ``id_key``."""
    items = []
    entries = body.get(list_key) if isinstance(body, dict) else None
    for err in error.errors(include_url=False):
        loc = list(err["loc"])
        index = (loc[1] if len(loc) >= 2 and loc[0] == list_key and isinstance(loc[1], int)
                 else None)
        item_id = None
        if index is not None and isinstance(entries, list) and isinstance(entries[index], dict):
            item_id = echoable_id(entries[index].get(id_key))
        field = ".".join(str(p) for p in (loc[2:] if index is not None else loc)) or "body"
        reason = err["msg"]
        if err["type"] in _NOT_AN_OBJECT and (not loc or (index is not None and len(loc) == 2)):
            # the body, or a whole item, is not an object: say what it must look like
            field = "body" if not loc else list_key
            reason = (f"the body must be {_SHAPES['body'][list_key]}" if not loc
                      else _SHAPES["item"][list_key])
        items.append(ErrorItem(index=index, field=field, reason=reason,
                               **{id_key: item_id}))
    return items


def echoable_id(raw: Any) -> str | int | None:
    """A pair_id safe to repeat in an error: a valid one, else None (never a bool, a huge
    string or text that is not valid Unicode)."""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        return None
    if isinstance(raw, str):
        if len(raw) > MAX_PAIR_ID_LENGTH:
            return None
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return raw


# --- the kinds of request -------------------------------------------------------------------

class RequestKind(ABC, Generic[R]):
    """What differs between the kinds of request; the rest (admission, limits, loading,
    deduplication, cache, inference, errors) is one code path."""

    id_field: ClassVar[Literal["pair_id", "id"]]  # the id in error items
    items_key: ClassVar[str]  # the answer's list (counted into the route's metrics)
    timed: ClassVar[bool] = True  # the route adds ``processing_time_ms`` to the answer

    @abstractmethod
    def validate(self, body: Any, settings: TransformerSettings) -> R:
        """The body as this kind's request; raises ``ServiceError`` (413, 422)."""

    def parse(self, body: Any, settings: TransformerSettings) -> Parsed[R]:
        """The body validated, with its kind: the one parse a request gets."""
        return Parsed(self, self.validate(body, settings))

    async def check(self, request: R, model_info: ModelInfo) -> None:  # noqa: B027
        """Refuse the request before any image is touched (nothing to refuse by default)."""

    @abstractmethod
    def plan(self, request: R) -> Plan:
        """The request's distinct images, and who uses each."""

    @abstractmethod
    def ids(self, request: R) -> list[PairId]:
        """The id of each pair (or image), in request order, for error items."""

    def log_fields(self, request: R) -> dict[str, Any]:
        """Fields for the access log line (besides the distinct images)."""
        return {}

    @abstractmethod
    async def render(self, request: R, plan: Plan, embeddings: np.ndarray,
                     rows: Sequence[int], model_info: ModelInfo) -> dict[str, Any]:
        """The answer's body, from the embeddings of the distinct images (``rows``: per
        input of ``plan``, its row in ``embeddings``)."""

    def error_body(self, error: ServiceError) -> dict[str, Any]:
        """An error's body, in this route's shape."""
        return error.body()


@dataclass(frozen=True)
class Parsed(Generic[R]):
    """A validated request and its kind (what the model pipeline is given)."""

    kind: RequestKind[R]
    request: R

    @property
    def id_field(self) -> Literal["pair_id", "id"]:
        return self.kind.id_field

    async def check(self, model_info: ModelInfo) -> None:
        await self.kind.check(self.request, model_info)

    def plan(self) -> Plan:
        return self.kind.plan(self.request)

    def ids(self) -> list[PairId]:
        return self.kind.ids(self.request)

    def log_fields(self) -> dict[str, Any]:
        return self.kind.log_fields(self.request)

    async def render(self, plan: Plan, embeddings: np.ndarray, rows: Sequence[int],
                     model_info: ModelInfo) -> dict[str, Any]:
        return await self.kind.render(self.request, plan, embeddings, rows, model_info)


def _with_warnings(answer: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    if warnings:
        answer["warnings"] = warnings
    return answer


class Pairs(RequestKind[SimilarityRequest]):
    """``POST /similarity``: image pairs in, a score per pair out."""

    id_field = "pair_id"
    items_key = "scores"

    def validate(self, body: Any, settings: TransformerSettings) -> SimilarityRequest:
        return validate_similarity(body, limit=settings.max_pairs_per_request)

    def plan(self, request: SimilarityRequest) -> PairPlan:
        return plan_pairs(request.pairs)

    def ids(self, request: SimilarityRequest) -> list[PairId]:
        return [p.pair_id for p in request.pairs]

    def log_fields(self, request: SimilarityRequest) -> dict[str, Any]:
        return {"pairs": len(request.pairs)}

    async def render(self, request: SimilarityRequest, plan: Plan, embeddings: np.ndarray,
                     rows: Sequence[int], model_info: ModelInfo) -> dict[str, Any]:
        assert isinstance(plan, PairPlan)
        scores = score_pairs(embeddings, plan, rows, self.ids(request))
        return _with_warnings({"scores": [s.model_dump() for s in scores]},
                              request._warnings)


class Images(RequestKind[EmbedRequest]):
    """``POST /embed``: images in, an embedding per image out."""

    id_field = "id"
    items_key = "embeddings"

    def validate(self, body: Any, settings: TransformerSettings) -> EmbedRequest:
        return validate_embed(body, limit=settings.max_images_per_request)

    def plan(self, request: EmbedRequest) -> ImagePlan:
        return plan_images(request.images)

    def ids(self, request: EmbedRequest) -> list[PairId]:
        return [image.id for image in request.images]

    async def render(self, request: EmbedRequest, plan: Plan, embeddings: np.ndarray,
                     rows: Sequence[int], model_info: ModelInfo) -> dict[str, Any]:
        assert isinstance(plan, ImagePlan)
        info = await model_info()
        # Rendered to JSON text on a thread, each distinct embedding once: 256 vectors
        # through pydantic and json.dumps held the event loop for seconds.
        rendered = await asyncio.to_thread(render_embeddings, embeddings, plan, rows,
                                           self.ids(request), request.encoding)
        return _with_warnings({"embeddings": rendered, "model_type": info["model_type"],
                               "dim": info["embedding_dim"]}, request._warnings)


class OpenAIEmbeddings(RequestKind[openai_api.ParsedEmbeddings]):
    """``POST /v1/embeddings``: exactly ``/embed`` (its images, plan and rendering), with
    the model name checked first and the answer and errors in OpenAI's shape."""

    id_field = "id"
    items_key = "data"
    timed = False

    def validate(self, body: Any,
                 settings: TransformerSettings) -> openai_api.ParsedEmbeddings:
        return openai_api.parse(body, limit=settings.max_images_per_request)

    async def check(self, request: openai_api.ParsedEmbeddings,
                    model_info: ModelInfo) -> None:
        info = await model_info()
        openai_api.check_model(request, model_type=info["model_type"],
                               dim=info["embedding_dim"])

    def plan(self, request: openai_api.ParsedEmbeddings) -> ImagePlan:
        return IMAGES.plan(request.embed)

    def ids(self, request: openai_api.ParsedEmbeddings) -> list[PairId]:
        return IMAGES.ids(request.embed)

    async def render(self, request: openai_api.ParsedEmbeddings, plan: Plan,
                     embeddings: np.ndarray, rows: Sequence[int],
                     model_info: ModelInfo) -> dict[str, Any]:
        result = await IMAGES.render(request.embed, plan, embeddings, rows, model_info)
        return openai_api.answer(result, inputs=len(request.embed.images))

    def error_body(self, error: ServiceError) -> dict[str, Any]:
        return openai_api.error_body(error)


PAIRS = Pairs()
IMAGES = Images()
OPENAI_EMBEDDINGS = OpenAIEmbeddings()
