"""Transformer configuration: environment variables, read and validated once at start-up."""

from __future__ import annotations

import os

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_MB = 1_000_000


class TransformerSettings(BaseSettings):
    """Settings of the transformer (env names are the field names, upper-cased)."""

    model_config = SettingsConfigDict(protected_namespaces=(), extra="ignore")

    max_pairs_per_request: int = Field(128, ge=1, le=100_000,
                                       description="more pairs than this is a client error (413)")
    batch_size_limit: int = Field(64, ge=1, le=4096,
                                  description="largest batch the predictor runs at once")
    url_fetch_timeout: float = Field(10.0, gt=0, le=600,
                                     description="seconds allowed to fetch one URL, in all")
    max_image_size_mb: float = Field(20.0, gt=0, le=1024,
                                     description="largest image accepted, from any source")
    max_image_pixels: int = Field(89_478_485, ge=1,
                                  description="largest decoded image (width x height)")
    decode_workers: int = Field(default_factory=lambda: os.cpu_count() or 2, ge=1, le=256,
                                description="threads decoding images in parallel")
    url_fetch_concurrency: int = Field(32, ge=1, le=1024,
                                       description="URLs fetched at once, over all requests")
    predictor_timeout: float = Field(120.0, gt=0,
                                     description="seconds allowed for one predictor call")

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_size_mb * _MB)
