"""The predictor as a KServe model server: thin glue around ``predictor.model``.

Serves model ``dreamsim`` over gRPC v2 and REST v2. Input: one UINT8 tensor
``[N, 3, 224, 224]`` (raw contents on gRPC). Output: one FP32 tensor ``embedding``
``[N, D]`` of normalised DreamSim embeddings, with response parameters ``device``,
``model_type`` and ``precision`` (and, additively, ``attention_backend``, ``cuda_graphs``,
and on CUDA ``device_index`` and ``gpu_name``) so that the transformer can report them. An
empty batch (``N = 0``) is answered without running the model: the transformer uses it to
describe the predictor for ``/health``.

A CUDA error other than out-of-memory leaves the CUDA context unusable: the predictor then
reports not ready, answers the calls in flight with the error, and exits (code 3) so that
Kubernetes restarts the pod (``predictor.device.is_fatal_device_error``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve import model_server as kserve_model_server
from kserve.constants.constants import MAX_GRPC_MESSAGE_LENGTH
from kserve.errors import InvalidInput, ServerNotReady

from service_common import logs
from service_common.cpus import fast_bf16_flags
from service_common.wire import (
    IMAGE_SHAPE,
    INPUT_DATATYPE,
    INPUT_NAME,
    MODEL_NAME,
    OUTPUT_DATATYPE,
    OUTPUT_NAME,
)

from .batching import MicroBatcher
from .checkpoint import WeightsError, weights_fingerprint
from .device import DeviceError, driver_version, gpu_name, is_fatal_device_error
from .grpc_server import PredictorModelServer, connection_age_options
from .model import LoadedModel, load_model
from .runner import (
    CudaOps,
    EagerRunner,
    GraphForward,
    StagedRunner,
    bucket_sizes,
    eager_forward,
)
from .settings import PredictorSettings
from .threads import configure_torch_threads

log = logging.getLogger("predictor")

_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
FATAL_EXIT_CODE = 3
FATAL_EXIT_DELAY_S = 1.0  # lets the calls in flight receive their error first


def _exit_soon(code: int) -> None:
    """Exit the process after FATAL_EXIT_DELAY_S, whatever the event loop is doing."""
    timer = threading.Timer(FATAL_EXIT_DELAY_S, os._exit, (code,))
    timer.daemon = True
    timer.start()


class DreamSimPredictor(Model):
    """kserve Model: uint8 images in, normalised DreamSim embeddings out."""

    def __init__(self, name: str, settings: PredictorSettings, *,
                 exit_process: Callable[[int], None] = _exit_soon) -> None:
        super().__init__(name)
        self.settings = settings
        self.loaded: LoadedModel | None = None
        self.model_id = ""  # variant, precision, device, weights: the transformer's cache key
        self._batcher: MicroBatcher | None = None  # made by load(), once the device is known
        self._runner: EagerRunner | StagedRunner | None = None
        self.graphs = False  # CUDA graphs captured and in use
        self.buckets: tuple[int, ...] = ()
        self.fatal_error: str | None = None
        self._exit_process = exit_process

    def _embed(self, parts: list[np.ndarray]) -> np.ndarray:
        """Runs in a worker thread (MicroBatcher): the images of ``parts``, in order."""
        assert self._runner is not None, "embed before load"
        try:
            return self._runner.run(parts)
        except Exception as e:
            if is_fatal_device_error(e):
                self._fail(e)
            raise

    def _fail(self, error: BaseException) -> None:
        """A sticky device error: not ready from now on, then exit for a restart."""
        if self.fatal_error is not None:
            return
        self.fatal_error = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
        self.ready = False
        log.critical("device error on %s, the CUDA context is unusable: %s; reporting not "
                     "ready and exiting (code %d) so that the pod is restarted",
                     self.loaded.device if self.loaded else "?", self.fatal_error,
                     FATAL_EXIT_CODE)
        self._exit_process(FATAL_EXIT_CODE)

    def _make_runner(self) -> EagerRunner | StagedRunner:
        """CPU: eager chunks. CUDA: staged copies, with a CUDA graph per bucket unless
        CUDA_GRAPHS=false or capture fails (then eager, with a warning)."""
        assert self.loaded is not None
        s, loaded = self.settings, self.loaded
        if loaded.device.type != "cuda":
            return EagerRunner(loaded.embedder, chunk=s.chunk_size(loaded.device.type))
        self.buckets = bucket_sizes(s.batch_size_limit)
        ops = CudaOps(loaded.device)
        forward = eager_forward(loaded.embedder)
        if s.cuda_graphs:
            try:
                forward = GraphForward(loaded.embedder, self.buckets, ops)
                self.graphs = True
            except Exception as e:
                if is_fatal_device_error(e):
                    raise
                log.warning("capturing CUDA graphs failed (%s: %s); running eagerly",
                            type(e).__name__, str(e)[:300])
                torch.cuda.synchronize(loaded.device)
        return StagedRunner(forward, loaded.embedder, ops=ops, max_batch=s.batch_size_limit,
                            slots=s.batches_in_flight)

    def _warm_up(self) -> None:
        """CPU: 2 images. CUDA: one batch of every bucket through the serving path, so the
        first real batch of any size pays no lazy kernel loading or allocator growth."""
        assert self._runner is not None
        sizes = self.buckets or (min(2, self.settings.batch_size_limit),)
        for size in sizes:
            self._runner.run([np.zeros((size, *IMAGE_SHAPE), dtype=np.uint8)])

    def load(self) -> bool:
        """Load the weights, warm up every bucket served, then (only then) report ready."""
        s = self.settings
        self.loaded = load_model(cache_dir=s.model_cache_dir, variant=s.model_type,
                                 device=s.device, precision=s.precision,
                                 fallback=s.device_fallback)
        self.model_id = ":".join((s.model_type, self.precision_name, self.loaded.device.type,
                                  weights_fingerprint(s.model_cache_dir, s.model_type)))
        self._runner = self._make_runner()
        warm_start = time.perf_counter()
        self._warm_up()
        # Concurrent requests share forward passes where that pays (BATCH_ACROSS_REQUESTS);
        # on CUDA BATCHES_IN_FLIGHT of them are staged and queued at once.
        combine = s.combines_requests(self.loaded.device.type)
        in_flight = s.batches_in_flight if self.loaded.device.type == "cuda" else 1
        self._batcher = MicroBatcher(self._embed, max_images=s.batch_size_limit,
                                     max_wait_s=s.batch_max_wait_ms / 1000, combine=combine,
                                     max_in_flight=in_flight)
        d = self.describe()
        log.info("loaded DreamSim %s from %s on %s%s (%s) in %.1f s; embedding dim %d; "
                 "attention %s; %s; CUDA graphs %s; warm-up of %s in %.1f s; batching "
                 "across requests %s, %d in flight", s.model_type, s.model_cache_dir,
                 self.loaded.device, f" ({d['gpu_name']}, driver {driver_version()})"
                 if "gpu_name" in d else "", self.precision_name, self.loaded.load_seconds,
                 self.loaded.embedder.embedding_dim, self.loaded.attention,
                 self.loaded.policy.describe() if self.loaded.device.type == "cuda"
                 else "CPU", "on" if self.graphs else "off",
                 f"buckets {list(self.buckets)}" if self.buckets else "2 images",
                 time.perf_counter() - warm_start, "on" if combine else "off", in_flight)
        self.ready = True
        return self.ready

    @property
    def precision_name(self) -> str:
        assert self.loaded is not None
        return _DTYPE_NAMES[self.loaded.dtype]

    def describe(self) -> dict[str, Any]:
        """What the transformer reports in /health."""
        assert self.loaded is not None
        info: dict[str, Any] = {
            "device": self.loaded.device.type, "model_type": self.settings.model_type,
            "precision": self.precision_name,
            "embedding_dim": self.loaded.embedder.embedding_dim, "model_id": self.model_id,
            "attention_backend": self.loaded.attention, "cuda_graphs": self.graphs}
        if self.loaded.device.type == "cuda":  # (KServe parameters cannot carry None)
            info["device_index"] = int(self.loaded.device.index or 0)
            info["gpu_name"] = gpu_name(self.loaded.device) or ""
        return info

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": INPUT_NAME, "datatype": INPUT_DATATYPE, "shape": [-1, *IMAGE_SHAPE]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        dim = self.loaded.embedder.embedding_dim if self.loaded else -1
        return [{"name": OUTPUT_NAME, "datatype": OUTPUT_DATATYPE, "shape": [-1, dim]}]

    def _images(self, payload: InferRequest) -> np.ndarray:
        if not isinstance(payload, InferRequest) or len(payload.inputs) != 1:
            raise InvalidInput(f"expected exactly one input tensor of {INPUT_DATATYPE} "
                               f"[N, {', '.join(map(str, IMAGE_SHAPE))}]")
        tensor = payload.inputs[0]
        shape = list(tensor.shape)
        if (tensor.datatype != INPUT_DATATYPE or len(shape) != 4
                or shape[1:] != list(IMAGE_SHAPE)):
            raise InvalidInput(f"expected {INPUT_DATATYPE} [N, {', '.join(map(str, IMAGE_SHAPE))}],"
                               f" got {tensor.datatype} {shape}")
        return tensor.as_numpy()

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        """Embed a batch of images (chunked at BATCH_SIZE_LIMIT)."""
        assert self.loaded is not None, "predict before load"
        if self.fatal_error is not None:
            raise ServerNotReady(f"the predictor is restarting after a device error: "
                                 f"{self.fatal_error}")
        started = time.perf_counter()
        images = self._images(payload)
        if images.shape[0] == 0:
            embeddings = np.zeros((0, self.loaded.embedder.embedding_dim), dtype=np.float32)
        else:
            assert self._batcher is not None
            embeddings = await self._batcher.embed(images)
        # Raw bytes on gRPC and for REST clients that ask for binary outputs; JSON otherwise.
        binary = bool(payload.from_grpc or payload.use_binary_outputs)
        output = InferOutput(name=OUTPUT_NAME, shape=list(embeddings.shape),
                             datatype=OUTPUT_DATATYPE)
        output.set_data_from_numpy(embeddings, binary_data=binary)
        # Per call, so DEBUG; the id is the transformer's request id (one per public request).
        log.debug("infer id=%s images=%d %.1f ms", payload.id, images.shape[0],
                  (time.perf_counter() - started) * 1000,
                  extra={"request_id": payload.id, "images": int(images.shape[0])})
        return InferResponse(response_id=payload.id or "", model_name=self.name,
                             infer_outputs=[output], parameters=self.describe(),
                             use_binary_outputs=binary)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m predictor [kserve ModelServer flags]``."""
    parser = argparse.ArgumentParser(parents=[kserve_model_server.parser],
                                     description="DreamSim predictor (KServe model server)")
    parser.set_defaults(model_name=MODEL_NAME)
    args, _ = parser.parse_known_args(argv)
    try:
        settings = PredictorSettings()
    except Exception as e:  # pydantic ValidationError: a bad env value fails at start-up
        logging.basicConfig(format=logs.TEXT_FORMAT)
        log.error("invalid configuration: %s", e)
        return 2
    logs.configure(settings)
    # The largest allowed request must fit in one gRPC message (NOTES §4: 8 MiB default).
    needed = settings.grpc_message_limit()
    for flag in ("grpc_max_receive_message_length", "grpc_max_send_message_length"):
        if getattr(kserve_model_server.args, flag) == MAX_GRPC_MESSAGE_LENGTH:
            setattr(kserve_model_server.args, flag, max(needed, MAX_GRPC_MESSAGE_LENGTH))
    configure_torch_threads(settings.torch_threads)
    if settings.precision == "bf16" and not (settings.device.startswith("cuda")
                                             and torch.cuda.is_available()):
        if not fast_bf16_flags():
            log.warning("PRECISION=bf16 on a CPU without AVX-512 BF16 or AMX: torch emulates "
                        "bf16 here, which is slower than fp32; use PRECISION=fp32")
    model = DreamSimPredictor(args.model_name, settings)
    try:
        model.load()
    except (WeightsError, DeviceError, ValueError) as e:
        log.error("%s", e)
        return 2
    log.info("serving model %r: REST on :%d, gRPC on :%d (message limit %d bytes)",
             args.model_name, args.http_port, args.grpc_port,
             kserve_model_server.args.grpc_max_receive_message_length)
    options = connection_age_options(settings.grpc_max_connection_age,
                                     settings.grpc_max_connection_age_grace)
    PredictorModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1,
                         grpc_options=options).start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
