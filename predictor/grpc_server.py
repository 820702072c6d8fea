"""KServe's model server with a gRPC server that ends connections after a maximum age.

Through a ClusterIP Service a client's TCP connection stays on the predictor pod it first
reached; a pod added later (scale-up, rollout) gets no share of existing connections. With
``grpc.max_connection_age_ms`` the server sends GOAWAY after that age (gRPC adds +-10%
jitter): the client finishes its calls in flight on the old connection, opens a new one,
and kube-proxy deals it again (the arguments of gRPC's proposal A9, "Server-side
Connection Management"). ``grace`` bounds how long calls in
flight may still take on a closing connection; keep it above the transformer's
``PREDICTOR_TIMEOUT`` so that none is cut.

KServe 0.21's ``ModelServer`` passes its gRPC server nothing but the message limits, so this
module builds the same server (``kserve/protocol/grpc/server.py``, ``GRPCServer.start``)
with the extra options. KServe's per-call INFO logging interceptor is left out: the model
logs each call at DEBUG (one line per public request is the transformer's job).

grpc-python sets SO_REUSEPORT on its listening sockets by default: a second predictor on a
port in use would bind without error and the kernel would split new connections between
the two (another MODEL_TYPE there means wrong answers). ``grpc.so_reuseport`` is 0 here,
so a port in use stops the predictor at start with a message naming it.
"""

from __future__ import annotations

import asyncio
from concurrent import futures
from typing import Any

from grpc import aio
from kserve import ModelServer
from kserve import model_server as kserve_model_server
from kserve.logging import logger
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer


def connection_age_options(age_s: float, grace_s: float) -> list[tuple[str, int]]:
    """gRPC server arguments ending connections after ``age_s`` (0: never), then
    allowing ``grace_s`` for calls in flight."""
    if age_s <= 0:
        return []
    return [("grpc.max_connection_age_ms", round(age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", round(grace_s * 1000))]


class PortInUse(RuntimeError):
    """The gRPC port could not be bound: another process listens on it."""


class AgingGRPCServer(GRPCServer):
    """KServe's ``GRPCServer`` with extra server arguments (``options``)."""

    def __init__(self, port: int, *, options: list[tuple[str, Any]], **kwargs: Any) -> None:
        super().__init__(port, **kwargs)
        self._extra_options = options

    def bind(self, max_workers: int) -> None:
        """Make the server and bind its port; raise PortInUse when the port is taken
        (before anything else has started, so that nothing else logs a traceback)."""
        servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(ExceptionToStatusInterceptor(),),
            options=[("grpc.max_send_message_length",
                      self._kwargs.get("grpc_max_send_message_length")),
                     ("grpc.max_receive_message_length",
                      self._kwargs.get("grpc_max_receive_message_length")),
                     # A port in use fails here instead of being shared (module docstring).
                     ("grpc.so_reuseport", 0),
                     *self._extra_options])
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer,
                                                                           self._server)
        try:
            self._server.add_insecure_port(f"[::]:{self._port}")
        except RuntimeError:
            raise PortInUse(f"gRPC port {self._port} is in use (another predictor?); "
                            "stopping") from None

    async def start(self, max_workers: int) -> None:
        if self._server is None:
            self.bind(max_workers)
        logger.info("gRPC server on port %d, options %s", self._port, self._extra_options)
        await self._server.start()
        await self._server.wait_for_termination()


class PredictorModelServer(ModelServer):
    """``ModelServer`` whose gRPC server is ``AgingGRPCServer`` with ``grpc_options``."""

    def __init__(self, *, grpc_options: list[tuple[str, Any]], **kwargs: Any) -> None:
        super().__init__(enable_grpc=False, **kwargs)  # ours replaces KServe's
        self._grpc_options = grpc_options

    def start(self, models: list[Any]) -> None:
        """Serve ``models`` until stopped; a gRPC port in use exits with status 2 and a
        line saying so, not a traceback."""
        try:
            super().start(models)
        except PortInUse as e:
            logger.error("%s", e)
            raise SystemExit(2) from None

    async def _serve(self) -> None:
        # Started beside KServe's REST server; ModelServer.stop() stops it by this name.
        self._grpc_server = AgingGRPCServer(
            self.grpc_port, options=self._grpc_options, data_plane=self.dataplane,
            model_repository_extension=self.model_repository_extension,
            kwargs=vars(kserve_model_server.args), grace_period=self.grace_period)
        try:
            self._grpc_server.bind(self.max_threads)
        except PortInUse:
            for server in self.servers:  # KServe's REST server: not started yet
                server.close()
            raise
        await asyncio.gather(self._grpc_server.start(self.max_threads), *self.servers)
