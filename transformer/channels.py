"""Several gRPC connections to the predictor, with calls spread over them.

A gRPC channel keeps one long-lived HTTP/2 connection. Through a Kubernetes ClusterIP
Service, kube-proxy picks a predictor pod once per TCP connection, so one channel pins a
transformer pod to one predictor pod however many replicas run (gRPC's own docs: "Load
balancing in gRPC" - connection-level balancing does not spread the calls of one long-lived
connection). ``ChannelPool`` keeps ``size`` channels, each its own TCP connection, and sends
each call over the channel with the fewest calls in flight (ties taken in turn), so the
calls of one pod spread over the predictors behind the Service. The predictor ends
connections after ``GRPC_MAX_CONNECTION_AGE``, so the connections are re-dealt over time,
e.g. after the predictors scale up.

grpc-python shares subchannels (and so TCP connections) between channels whose target and
arguments are equal (the global subchannel pool): each channel here uses its own local
subchannel pool and carries its index as an argument, so that ``size`` channels really are
``size`` connections (``tests/transformer/test_spreading.py`` counts them; measured: with
equal arguments, three channels made one connection and sent every call to one backend).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

ChannelOptions = Sequence[tuple[str, Any]]


class ChannelPool:
    """``size`` gRPC channels to ``target``, made lazily (a ``grpc.aio`` channel belongs to
    the event loop it was made in).

    Args:
        target: ``host:port``.
        size: number of channels (TCP connections).
        options: gRPC channel arguments common to all channels.
        credentials: TLS credentials, or None for plaintext (h2c).
    """

    def __init__(self, target: str, *, size: int, options: ChannelOptions,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        assert size >= 1, "a pool needs at least one channel"
        self.target = target
        self.size = size
        self._options = list(options)
        self._credentials = credentials
        self._channels: list[grpc.aio.Channel] = []
        self._stubs: list[GRPCInferenceServiceStub] = []
        self.in_flight = [0] * size
        self._next = 0

    def _open(self) -> None:
        for index in range(self.size):
            options = [*self._options, ("grpc.use_local_subchannel_pool", 1),
                       ("transformer.channel_index", index)]
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(self.target, self._credentials,
                                                  options=options)
            else:
                channel = grpc.aio.insecure_channel(self.target, options=options)
            self._channels.append(channel)
            self._stubs.append(GRPCInferenceServiceStub(channel))

    @contextmanager
    def stub(self) -> Iterator[GRPCInferenceServiceStub]:
        """A stub on the least busy channel, counted as busy for the with-block."""
        if not self._stubs:
            self._open()
        start = self._next
        self._next = (start + 1) % self.size
        index = min(range(self.size),
                    key=lambda i: (self.in_flight[i], (i - start) % self.size))
        self.in_flight[index] += 1
        try:
            yield self._stubs[index]
        finally:
            self.in_flight[index] -= 1

    async def close(self) -> None:
        """Close every channel; the next call opens new ones."""
        channels, self._channels, self._stubs = self._channels, [], []
        for channel in channels:
            await channel.close()
