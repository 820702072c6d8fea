"""A TCP load balancer in the manner of kube-proxy, for load-spreading tests and benches.

A ClusterIP Service balances connections, not calls: kube-proxy picks a backend pod when a
TCP connection opens (IPVS mode: round robin by default; iptables mode: at random) and every
byte of that connection then goes to that pod. This balancer does the same on loopback:
asyncio, one backend picked per accepted connection, bytes copied both ways until either
side closes. It counts connections per backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Iterator, Sequence
from typing import Literal

Policy = Literal["round-robin", "random"]


class TcpBalancer:
    """Listens on 127.0.0.1 and deals connections over ``backends`` (``host:port``).

    Args:
        backends: where connections go.
        policy: ``round-robin`` (kube-proxy IPVS default) or ``random`` (iptables mode).
        seed: for ``random``.
    """

    def __init__(self, backends: Sequence[str], *, policy: Policy = "round-robin",
                 seed: int = 0) -> None:
        self.backends = list(backends)
        self.policy = policy
        self.connections = [0] * len(self.backends)
        self._rng = random.Random(seed)
        self._turn = 0

    def _pick(self) -> int:
        if self.policy == "random":
            return self._rng.randrange(len(self.backends))
        index = self._turn
        self._turn = (index + 1) % len(self.backends)
        return index

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self._pick()
        self.connections[index] += 1
        host, port = self.backends[index].rsplit(":", 1)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        except asyncio.CancelledError:  # the balancer is stopping: drop the connection
            up_writer.close()
            writer.close()

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        """Run in a background thread for the with-block; yields ``127.0.0.1:port``."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        address: list[str] = []
        stop: asyncio.Future[None] | None = None

        async def main() -> None:
            nonlocal stop
            stop = loop.create_future()
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            address.append(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
            started.set()
            async with server:
                await stop
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:  # the connections still open
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        assert started.wait(10), "the balancer did not start"
        try:
            yield address[0]
        finally:
            assert stop is not None
            loop.call_soon_threadsafe(stop.set_result, None)
            thread.join(10)
            loop.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
