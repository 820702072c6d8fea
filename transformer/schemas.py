"""The public API's request and response bodies (see README, "API")."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StrictInt, StrictStr

MAX_PAIR_ID_LENGTH = 256
# A string (up to 256 characters) or an integer, echoed as given; booleans, floats and
# objects are rejected rather than coerced, so the echo is always exactly what was sent.
PairId = Annotated[StrictStr, Field(max_length=MAX_PAIR_ID_LENGTH)] | StrictInt | None


class ImagePair(BaseModel):
    """Two images to compare; each is base64, a data URI or an http(s) URL."""

    model_config = ConfigDict(extra="ignore")

    reference_image: str = Field(description="base64, data URI or http(s) URL")
    generated_image: str = Field(description="base64, data URI or http(s) URL")
    pair_id: PairId = Field(None, description="echoed back in the score")


class SimilarityRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    pairs: list[ImagePair]
    # Unknown fields the body carried (transformer.unknown_fields), for the answer.
    _warnings: list[str] = PrivateAttr(default_factory=list)


class PairScore(BaseModel):
    distance: float = Field(description="DreamSim distance, 0 for identical images")
    similarity: float = Field(description="1 / (1 + distance)")
    pair_id: PairId = None


WARNINGS_DESCRIPTION = ("unknown fields of the request that were ignored (a misspelt "
                        "optional field, say); present only when there are some")


class SimilarityResponse(BaseModel):
    scores: list[PairScore] = Field(description="one per pair, in request order")
    processing_time_ms: float
    warnings: list[str] | None = Field(None, description=WARNINGS_DESCRIPTION)


class HealthResponse(BaseModel):
    status: str = Field(description="'healthy' when requests are served now, else 'unavailable'")
    model_loaded: bool
    device: str | None = Field(description="where the model runs: cuda or cpu")
    model_type: str | None = Field(description="the DreamSim variant loaded")
    precision: str | None = Field(None, description="fp32, fp16 or bf16, as the predictor runs")
    device_index: int | None = Field(None, description="the GPU's index (cuda:N); null on CPU")
    gpu_name: str | None = Field(None, description="the GPU's name; null on CPU")
    attention_backend: str | None = Field(
        None, description="the attention kernel in use: flash, efficient, cudnn or math")


class EmbedImage(BaseModel):
    """One image to embed: base64, a data URI or an http(s) URL."""

    model_config = ConfigDict(extra="ignore")

    image: str = Field(description="base64, data URI or http(s) URL")
    id: PairId = Field(None, description="echoed back with the embedding")


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    images: list[EmbedImage]
    encoding: Literal["float", "base64"] = Field(
        "float", description="float: a list of numbers; base64: the little-endian float32 "
                             "bytes of the vector, base64-encoded")
    _warnings: list[str] = PrivateAttr(default_factory=list)


class ImageEmbedding(BaseModel):
    embedding: list[float] | str = Field(
        description="the normalised DreamSim embedding (zero mean, unit norm): "
                    "1 - dot(a, b) is the /similarity distance")
    id: PairId = None


class EmbedResponse(BaseModel):
    embeddings: list[ImageEmbedding] = Field(description="one per image, in request order")
    model_type: str = Field(description="the DreamSim variant that computed them")
    dim: int = Field(description="length of each embedding")
    processing_time_ms: float
    warnings: list[str] | None = Field(None, description=WARNINGS_DESCRIPTION)


class ErrorItem(BaseModel):
    """One thing wrong with a request: which pair or image, which field, why.

    An item names the pair (``pair_id``, /similarity) or the image (``id``, /embed) it was
    made for, never both: the identity field its maker did not set is left out of the
    answer (``ServiceError.body``).
    """

    index: int | None = Field(None, description="position of the pair in 'pairs' (or of the "
                                                "image in 'images')")
    pair_id: str | int | None = None
    id: str | int | None = Field(None, description="the image's id (POST /embed)")
    field: str = Field(description="e.g. 'reference_image', 'generated_image', 'pairs', "
                                   "'image'")
    reason: str


class RequestLimit(BaseModel):
    """The count limit a 413 refused a request for, for clients to split by (rather than
    parse it out of ``detail``)."""

    setting: str = Field(description="'MAX_PAIRS_PER_REQUEST' or 'MAX_IMAGES_PER_REQUEST'")
    value: int = Field(description="most pairs (or images) one request may carry")


class ErrorResponse(BaseModel):
    detail: str = Field(description="a one-line summary")
    errors: list[ErrorItem] = Field(default_factory=list)
    limit: RequestLimit | None = Field(
        None, description="only in a 413 for too many pairs or images: the limit exceeded")
