"""Predictor configuration: environment variables, read and validated once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from service_common.logs import LogSettings
from service_common.wire import IMAGE_BYTES  # one uint8 image tensor on the wire (re-exported)


class PredictorSettings(LogSettings):
    """Settings of the predictor (env names are the field names, upper-cased)."""

    model_config = SettingsConfigDict(protected_namespaces=(), extra="ignore")

    device: str = Field("cuda", pattern=r"^(cuda(:\d+)?|cpu)$",
                        description="where the model runs; cuda:N is checked against the "
                                    "GPUs present at start-up")
    device_fallback: bool = Field(
        True, description="DEVICE=cuda without a usable GPU: true runs on the CPU with a "
                          "warning (make run); false exits with the driver found and the one "
                          "needed (the predictor image sets false)")
    cuda_graphs: bool = Field(
        True, description="on CUDA, capture a CUDA graph per batch-size bucket before "
                          "readiness (falls back to eager if capture fails)")
    batches_in_flight: int = Field(
        2, ge=1, le=4, description="on CUDA, batches staged and queued on the GPU at once "
                                   "(one computes while the next is copied)")
    model_type: Literal["ensemble", "dino_vitb16", "dinov2_vitb14", "clip_vitb32",
                        "open_clip_vitb32", "synclr_vitb16", "dino_vitb16_patch",
                        "dinov2_vitb14_patch"] = Field(
        "dino_vitb16", description="DreamSim variant (predictor.layout.VARIANTS)")
    model_cache_dir: Path = Field(Path("models"), description="weights, upstream cache layout")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto: fp16 on CUDA, fp32 on CPU")
    batch_size_limit: int = Field(64, ge=1, le=4096,
                                  description="largest batch sent through the model at once")
    max_pairs_per_request: int = Field(128, ge=1, le=100_000,
                                       description="sizes the gRPC message limit")
    max_images_per_request: int = Field(256, ge=1, le=100_000,
                                        description="sizes the gRPC message limit (/embed)")
    cpu_batch_size: int = Field(
        16, ge=1, le=4096,
        description="on CPU, chunks are at most this big (smaller chunks stay in cache: "
                    "measured faster on CPU than 32-64)")
    batch_across_requests: Literal["auto", "true", "false"] = Field(
        "auto", description="concurrent requests share forward passes; auto: on CUDA only "
                            "(on CPU it measured no faster and raised the median latency)")
    torch_threads: int = Field(
        0, ge=0, le=1024,
        description="torch intra-op threads; 0: the CPUs usable (affinity capped by the "
                    "container's CPU limit), unless OMP_NUM_THREADS is set")
    batch_max_wait_ms: float = Field(
        2.0, ge=0, le=1000,
        description="how long a forward pass waits for other requests to join its batch")

    grpc_max_connection_age: float = Field(
        60.0, ge=0, le=86_400,
        description="seconds after which the gRPC server ends a connection (GOAWAY) so that "
                    "clients reconnect and a ClusterIP Service deals them again; 0: never")
    grpc_max_connection_age_grace: float = Field(
        130.0, ge=0, le=86_400,
        description="seconds calls in flight may still take on a connection being ended "
                    "(keep above the transformer's PREDICTOR_TIMEOUT)")

    @field_validator("batch_across_requests", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    def combines_requests(self, device_type: str) -> bool:
        """Whether concurrent requests share forward passes on ``device_type``."""
        if self.batch_across_requests == "auto":
            return device_type == "cuda"
        return self.batch_across_requests == "true"

    def chunk_size(self, device_type: str) -> int:
        """Images per forward pass on ``device_type``."""
        if device_type == "cpu":
            return min(self.batch_size_limit, self.cpu_batch_size)
        return self.batch_size_limit

    def grpc_message_limit(self) -> int:
        """Bytes needed for the largest allowed request (two images a pair, or the images
        of one /embed request) plus headroom."""
        images = max(2 * self.max_pairs_per_request, self.max_images_per_request)
        return images * IMAGE_BYTES + (4 << 20)
