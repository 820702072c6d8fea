"""The public API's request and response bodies (see README, "API")."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

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


class PairScore(BaseModel):
    distance: float = Field(description="DreamSim distance, 0 for identical images")
    similarity: float = Field(description="1 / (1 + distance)")
    pair_id: PairId = None


class SimilarityResponse(BaseModel):
    scores: list[PairScore] = Field(description="one per pair, in request order")
    processing_time_ms: float


class HealthResponse(BaseModel):
    status: str = Field(description="'healthy' when requests are served now, else 'unavailable'")
    model_loaded: bool
    device: str | None = Field(description="where the model runs: cuda or cpu")
    model_type: str | None = Field(description="the DreamSim variant loaded")


class ErrorItem(BaseModel):
    """One thing wrong with a request: which pair, which field, why."""

    index: int | None = Field(None, description="position of the pair in 'pairs'")
    pair_id: str | int | None = None
    field: str = Field(description="e.g. 'reference_image', 'generated_image', 'pairs'")
    reason: str


class ErrorResponse(BaseModel):
    detail: str = Field(description="a one-line summary")
    errors: list[ErrorItem] = Field(default_factory=list)
