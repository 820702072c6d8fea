"""Transformer configuration: environment variables, read and validated once at start-up."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from service_common.cpus import usable_cpus
from service_common.logs import LogSettings

from .netguard import IPNetwork, parse_networks

_MB = 1_000_000


class TransformerSettings(LogSettings):
    """Settings of the transformer (env names are the field names, upper-cased)."""

    model_config = SettingsConfigDict(protected_namespaces=(), extra="ignore")

    max_pairs_per_request: int = Field(128, ge=1, le=100_000,
                                       description="more pairs than this is a client error (413)")
    max_images_per_request: int = Field(
        256, ge=1, le=100_000, description="more images than this in one /embed request is "
                                           "a client error (413)")
    url_fetch_timeout: float = Field(10.0, gt=0, le=600,
                                     description="seconds allowed to fetch one URL, in all")
    max_image_size_mb: float = Field(20.0, gt=0, le=1024,
                                     description="largest image accepted, from any source")
    max_image_pixels: int = Field(89_478_485, ge=1,
                                  description="largest decoded image (width x height)")
    max_request_decode_mb: float = Field(
        1024.0, gt=0, le=65536,
        description="bytes one request's images may hold while decoding, at once, computed "
                    "from each header before decoding (an image needing more alone: 422; "
                    "the request's images otherwise wait for each other)")
    max_decodes_in_flight_mb: float = Field(
        1536.0, gt=0, le=262144,
        description="bytes all images being decoded may hold at once over the pod; a decode "
                    "waits for room (within its request's deadline)")
    decode_workers: int = Field(default_factory=usable_cpus, ge=1, le=256,
                                description="threads decoding images in parallel (default: "
                                            "the CPUs usable, container limit included)")
    url_fetch_concurrency: int = Field(32, ge=1, le=1024,
                                       description="URLs fetched at once, over all requests")
    url_fetch_per_request: int = Field(
        4, ge=1, le=1024,
        description="URLs one request fetches at once; at most URL_FETCH_CONCURRENCY / "
                    "MAX_CONCURRENT_REQUESTS, no request waits for another's fetches")
    predictor_timeout: float = Field(120.0, gt=0,
                                     description="seconds allowed for one predictor call")
    predictor_connections: int = Field(
        8, ge=1, le=256,
        description="gRPC connections to the predictor, calls spread over them: through a "
                    "ClusterIP Service each connection lands on one predictor pod")
    predictor_lb_policy: Literal["pick_first", "round_robin"] = Field(
        "pick_first",
        description="round_robin: every address the predictor host resolves to gets calls "
                    "in turn (a headless Service, --predictor_host dns:///NAME:PORT)")
    max_request_body_mb: float = Field(
        64.0, gt=0, le=4096, description="largest request body, checked before parsing; a "
                                         "body takes about twice its size in memory")
    max_bodies_in_flight_mb: float = Field(
        256.0, gt=0, le=65536,
        description="request bodies held at once over all requests (read, waiting or "
                    "processed); a body that would pass it gets 429 with Retry-After")
    body_read_timeout: float = Field(
        30.0, gt=0, le=3600,
        description="seconds a request body may take to arrive (then 408); read before a "
                    "processing slot is taken")
    request_timeout: float = Field(
        120.0, gt=0, le=3600,
        description="seconds from a request's arrival to its answer, all of it (body, "
                    "queue, fetches, decoding, predictor); then 504")
    max_request_fetch_mb: float = Field(
        128.0, gt=0, le=65536,
        description="bytes one request may fetch from URLs, all its images together (413)")
    max_concurrent_requests: int = Field(
        8, ge=1, le=1024, description="/similarity and /embed requests processed at once")
    max_queued_requests: int = Field(
        32, ge=0, le=100_000, description="requests waiting for a slot; more get a quick 429")
    queue_timeout: float = Field(30.0, gt=0,
                                 description="seconds a request may wait for a slot (then 503)")
    header_timeout: float = Field(
        10.0, gt=0, le=600,
        description="seconds a request's headers may take to arrive, from its first byte "
                    "(or the connection's opening); then 408 and the connection is closed")
    max_header_bytes: int = Field(
        65536, ge=1024, le=16 << 20,
        description="bytes of one request's head (request line and headers); more is 431")
    max_header_count: int = Field(
        100, ge=8, le=10_000, description="headers in one request; more is 431")
    max_connections: int = Field(
        1000, ge=1, le=1_000_000,
        description="HTTP connections open at once; at the bound an idle keep-alive "
                    "connection is closed to make room, else the new one gets 503 and is "
                    "closed (file descriptors stay bounded)")
    shutdown_grace_period: int = Field(
        30, ge=0, le=3600, description="seconds SIGTERM waits for in-flight requests")

    embedding_cache_size: int = Field(
        4096, ge=0, le=10_000_000,
        description="embeddings kept by image hash (0 disables the cache)")
    embedding_cache_scope: Literal["shared", "client", "off"] = Field(
        "shared", description="shared: one cache for all clients (a client can tell that "
                              "another sent the same image: single-tenant only); client: "
                              "per EMBEDDING_CACHE_CLIENT_HEADER value; off: no cache")
    embedding_cache_client_header: str = Field(
        "authorization", min_length=1, max_length=100,
        description="with EMBEDDING_CACHE_SCOPE=client, the request header naming the client "
                    "(set by the gateway); requests without it are not cached")
    model_identity_max_age_s: float = Field(
        5.0, ge=0, le=3600,
        description="seconds the predictor's model identity, as its last answer reported "
                    "it, is trusted for reading the embedding cache before an empty batch "
                    "asks again (0: ask before every request that reads the cache)")
    pipeline_chunk_images: int = Field(
        16, ge=0, le=4096,
        description="distinct images sent to the predictor per call as soon as they are "
                    "decoded, so that decoding overlaps inference (0: one call per request, "
                    "after all its images are decoded)")
    decode_mode: Literal["exact", "fast"] = Field(
        "exact", description="fast: JPEG draft decoding (not bit-identical to DreamSim)")
    decode_impl: Literal["native", "pillow"] = Field(
        "native", description="native: libspng/libjpeg-turbo decoders and a compiled port of "
                              "Pillow's resize, byte-identical and faster; pillow: Pillow for "
                              "every step (the reference)")

    url_fetch_enabled: bool = Field(True, description="false: URL inputs are refused (4xx)")
    url_allowed_networks: str = Field(
        "", description="comma-separated CIDRs URL fetches may reach although they lie in a "
                        "blocked range (private, loopback, link-local...), e.g. 10.2.0.0/16")
    url_max_redirects: int = Field(5, ge=0, le=20,
                                   description="redirects followed per URL, at most")
    dns_workers: int = Field(4, ge=1, le=64,
                             description="threads resolving URL hosts; a lookup that never "
                                         "returns holds one, and when all are held further "
                                         "lookups are refused at once")
    dns_timeout: float = Field(5.0, gt=0, le=60,
                               description="seconds one DNS lookup may take (then the URL "
                                           "is refused)")

    @field_validator("url_allowed_networks")
    @classmethod
    def _valid_networks(cls, value: str) -> str:
        parse_networks(value)  # a bad CIDR fails at start-up, naming the entry
        return value

    @model_validator(mode="after")
    def _bodies_fit(self) -> TransformerSettings:
        if self.max_bodies_in_flight_mb < self.max_request_body_mb:
            raise ValueError("MAX_BODIES_IN_FLIGHT_MB must be at least MAX_REQUEST_BODY_MB, "
                             "or a request of the largest size could never be read")
        return self

    @model_validator(mode="after")
    def _decodes_fit(self) -> TransformerSettings:
        if self.max_decodes_in_flight_mb < self.max_request_decode_mb:
            raise ValueError("MAX_DECODES_IN_FLIGHT_MB must be at least MAX_REQUEST_DECODE_MB, "
                             "or an image one request may decode could never be decoded")
        return self

    @property
    def allowed_networks(self) -> tuple[IPNetwork, ...]:
        """``url_allowed_networks`` parsed (validated at start-up)."""
        return parse_networks(self.url_allowed_networks)

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_size_mb * _MB)

    @property
    def max_request_decode_bytes(self) -> int:
        return int(self.max_request_decode_mb * _MB)

    @property
    def max_decodes_in_flight_bytes(self) -> int:
        return int(self.max_decodes_in_flight_mb * _MB)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_request_body_mb * _MB)

    @property
    def max_bodies_in_flight_bytes(self) -> int:
        return int(self.max_bodies_in_flight_mb * _MB)

    @property
    def max_request_fetch_bytes(self) -> int:
        return int(self.max_request_fetch_mb * _MB)
