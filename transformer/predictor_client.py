"""gRPC v2 client for the predictor: raw uint8 tensors out, embeddings back.

Built on KServe's own protobuf types and ``InferRequest``/``InferResponse`` conversions,
with our own channels so that timeouts, retries and error messages are ours (KServe's
``InferenceGRPCClient`` logs a traceback on every failed readiness check), and so that
calls spread over several connections (``channels.py``).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from kserve import InferInput, InferRequest, InferResponse
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

from service_common.logs import request_id as current_request_id
from service_common.wire import IMAGE_SHAPE, INPUT_DATATYPE, INPUT_NAME

from .channels import ChannelPool
from .errors import PredictorFailed, PredictorTimeout, PredictorUnavailable

# A restarted predictor is back within a reconnect; retry UNAVAILABLE a few times quickly.
_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{}],
    "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.2s", "maxBackoff": "1s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


_RETRY_BUFFER_BYTES = 64 << 20  # 2 x 128 images of 3x224x224 bytes, and headroom

# gRPC's reconnect backoff grows 1.6x per failed attempt up to 120 s by default: a channel
# that failed while the predictor was down for a minute would stay down for a minute or
# two after it is back. Capped to a second, so every channel rejoins within about a second
# (+-20% jitter) of the predictor's return. The connect deadline of an attempt
# (``min_reconnect_backoff_ms``, 20 s by default) is 2 s: a predictor address that drops
# packets is given up on, and tried again, quickly.
RECONNECT_BACKOFF_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 250),
                             ("grpc.max_reconnect_backoff_ms", 1000),
                             ("grpc.min_reconnect_backoff_ms", 2000)]
# When no channel is READY, how long a call waits for one (a reconnect, within the backoff
# cap above) before it is tried anyway and fails with 503.
READY_WAIT_S = 2.0


@dataclass(frozen=True)
class Embeddings:
    """The predictor's answer: ``vectors[i]`` is the embedding of image ``i``."""

    vectors: np.ndarray
    info: dict[str, Any]


def _parameters(response: InferResponse) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (response.parameters or {}).items():
        if hasattr(value, "WhichOneof"):  # a protobuf InferParameter
            kind = value.WhichOneof("parameter_choice")
            out[key] = getattr(value, kind) if kind else None
        else:
            out[key] = value
    return out


class PredictorClient:
    """Calls model ``model_name`` on ``host`` (``host:port``) over gRPC v2.

    Args:
        host: the predictor's gRPC address, ``host:port``.
        model_name: the predictor's model name.
        timeout_s: deadline of one inference call.
        use_ssl: TLS to the predictor.
        connections: gRPC connections the calls are spread over (``channels.py``).
        lb_policy: gRPC's load-balancing policy over the addresses ``host`` resolves to:
            ``pick_first`` (one of them) or ``round_robin`` (all, calls in turn).
    """

    def __init__(self, host: str, *, model_name: str, timeout_s: float,
                 use_ssl: bool = False, connections: int = 1,
                 lb_policy: str = "pick_first") -> None:
        self.host = host if ":" in host else f"{host}:{443 if use_ssl else 80}"
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.use_ssl = use_ssl
        options = [("grpc.max_send_message_length", -1),
                   ("grpc.max_receive_message_length", -1),
                   ("grpc.enable_retries", 1), ("grpc.service_config", _SERVICE_CONFIG),
                   # gRPC retries only calls whose message fits this buffer (256 KiB by
                   # default, under two images): cover the largest batch, so that a call
                   # caught by a predictor ending its connection is retried.
                   ("grpc.per_rpc_retry_buffer_size", _RETRY_BUFFER_BYTES),
                   ("grpc.lb_policy_name", lb_policy), *RECONNECT_BACKOFF_OPTIONS]
        self.channels = ChannelPool(
            self.host, size=connections, options=options,
            credentials=grpc.ssl_channel_credentials() if use_ssl else None)

    async def close(self) -> None:
        await self.channels.close()

    def _error(self, e: grpc.aio.AioRpcError, timeout_s: float) -> Exception:
        """The public error for a failed call: what the client can act on. The predictor's
        address and gRPC details go only to the log (``log_detail``)."""
        code, details = e.code(), (e.details() or "")[:300]
        internal = f"predictor {self.host}, model {self.model_name!r}: {code.name}: {details}"
        if code == grpc.StatusCode.UNAVAILABLE:
            if "not ready" in details.lower():
                return PredictorUnavailable("the model is still loading; retry shortly",
                                            retry_after_s=5, log_detail=internal)
            return PredictorUnavailable("the model server cannot be reached; retry shortly",
                                        retry_after_s=5, log_detail=internal)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return PredictorTimeout(f"the model server did not answer within {timeout_s:g} s",
                                    retry_after_s=5, log_detail=internal)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return PredictorFailed("the model server refused the batch as too large",
                                   log_detail=internal)
        if code == grpc.StatusCode.NOT_FOUND:
            return PredictorUnavailable("the model server does not serve this model",
                                        retry_after_s=5, log_detail=internal)
        return PredictorFailed(f"the model server failed ({code.name})", log_detail=internal)

    async def embed(self, images: np.ndarray, *, request_id: str | None = None,
                    timeout_s: float | None = None) -> Embeddings:
        """Embeddings of uint8 images ``[N, 3, 224, 224]``, checked for shape and sanity."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        tensor = InferInput(name=INPUT_NAME, shape=list(images.shape), datatype=INPUT_DATATYPE)
        tensor.set_data_from_numpy(np.ascontiguousarray(images), binary_data=True)
        request = InferRequest(model_name=self.model_name, infer_inputs=[tensor],
                               request_id=request_id or current_request_id.get()
                               or uuid.uuid4().hex)
        try:
            async with self.channels.stub(wait_s=min(READY_WAIT_S, timeout)) as stub:
                raw = await stub.ModelInfer(request.to_grpc(), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise self._error(e, timeout) from None
        response = InferResponse.from_grpc(raw)
        try:
            vectors = response.outputs[0].as_numpy()
        except Exception as e:
            raise PredictorFailed("the model server's answer could not be read",
                                  log_detail=f"predictor {self.host}: {e}"[:500]) from None
        if vectors.ndim != 2 or vectors.shape[0] != images.shape[0]:
            raise PredictorFailed(
                f"the model server answered {vectors.shape} for {images.shape[0]} images")
        if not np.all(np.isfinite(vectors)):
            raise PredictorFailed("the model server answered non-finite embeddings")
        return Embeddings(vectors=vectors, info=_parameters(response))

    async def is_ready(self, *, timeout_s: float = 2.0) -> bool:
        """Whether the predictor's model is loaded and warmed up (False when unreachable).

        Asked on a READY channel, where calls go (``ChannelPool``): True means the next
        call has a connection that answered."""
        try:
            async with self.channels.stub(wait_s=min(READY_WAIT_S, timeout_s / 2)) as stub:
                reply = await stub.ModelReady(pb.ModelReadyRequest(name=self.model_name),
                                              timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.ready)

    async def describe(self, *, timeout_s: float = 2.0) -> dict[str, Any]:
        """Device, model type and precision, from an empty batch (no model run)."""
        empty = np.zeros((0, *IMAGE_SHAPE), dtype=np.uint8)
        return (await self.embed(empty, timeout_s=timeout_s)).info
