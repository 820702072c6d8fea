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

Only READY channels get calls while any channel is READY. A channel whose connection
failed (the predictor restarting, say) sits in gRPC's reconnect backoff, and a call on it
fails at once with UNAVAILABLE even when the predictor is back; gRPC's retries stay on the
same channel. Before, calls went to such channels in turn: after a predictor restart
``/health`` answered 200 (its check had landed on a reconnected channel) while 10 of 16
requests got 503. Every pick also asks the channels that are not READY to connect, so
that they rejoin (an idle channel connects only when asked). When none is READY a call may
wait a little for the first that becomes so (``wait_s``) rather than fail at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
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

    def _pick(self) -> int:
        """The least busy READY channel (ties in turn), or the least busy of all when
        none is READY; every channel not READY is asked to connect."""
        ready = [channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY
                 for channel in self._channels]
        candidates = [i for i in range(self.size) if ready[i]] or list(range(self.size))
        start = self._next
        self._next = (start + 1) % self.size
        return min(candidates, key=lambda i: (self.in_flight[i], (i - start) % self.size))

    def ready_count(self) -> int:
        """How many channels are READY now (none opened yet: 0)."""
        return sum(channel.get_state() == grpc.ChannelConnectivity.READY
                   for channel in self._channels)

    async def _any_ready(self, timeout_s: float) -> None:
        """Return once some channel is READY, or after ``timeout_s``."""
        waits = [asyncio.ensure_future(channel.channel_ready()) for channel in self._channels]
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    @asynccontextmanager
    async def stub(self, *, wait_s: float = 0.0) -> AsyncIterator[GRPCInferenceServiceStub]:
        """A stub on the least busy READY channel, counted as busy for the with-block.

        Args:
            wait_s: when no channel is READY, wait up to this long for one to become so
                (then the call goes to the least busy channel and fails or connects there).
        """
        if not self._stubs:
            self._open()
        if wait_s > 0 and not self.ready_count():
            for channel in self._channels:
                channel.get_state(try_to_connect=True)
            await self._any_ready(wait_s)
        index = self._pick()
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
