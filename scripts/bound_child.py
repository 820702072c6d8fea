"""``python scripts/bound_child.py predictor|transformer ARGS``: one of ``make run``'s two
processes, its listening sockets bound to ``BIND_HOST`` (127.0.0.1 unless set).

KServe's servers bind every interface and take no address: the REST server passes
``host="0.0.0.0"`` to uvicorn and the gRPC servers add ``[::]:PORT``. In a container or a
pod that is what is wanted (the images run the modules directly, unchanged); on a laptop it
publishes the predictor's REST inference routes, which have none of the transformer's
limits, to the network. So only for ``make run`` this wrapper rewrites those two addresses
before the module's ``main`` runs: uvicorn's ``Config(host=...)`` and grpc.aio's
``add_insecure_port``. ``BIND_HOST=0.0.0.0`` (or ``::``) keeps KServe's addresses.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODULES = ("predictor", "transformer")


def grpc_address(address: str, host: str) -> str:
    """``[::]:PORT`` (KServe's, ours) rebound to ``host``; other addresses as given."""
    if address.startswith("[::]:"):
        port = address.rsplit(":", 1)[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return address


def bind_to(host: str) -> None:
    """Make uvicorn and grpc.aio servers created from now on listen on ``host`` only."""
    import uvicorn
    from grpc.aio._server import Server  # the class grpc.aio.server() returns

    config_init = uvicorn.Config.__init__

    def init(self: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        kwargs["host"] = host
        config_init(self, *args, **kwargs)

    uvicorn.Config.__init__ = init  # type: ignore[method-assign]

    add_port = Server.add_insecure_port

    def add_insecure_port(self: Server, address: str) -> int:
        return add_port(self, grpc_address(address, host))

    Server.add_insecure_port = add_insecure_port  # type: ignore[method-assign]


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in MODULES:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(MODULES)} [ARGS]")
    module = sys.argv[1]
    host = os.environ.get("BIND_HOST", "").strip() or "127.0.0.1"
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if host not in ("0.0.0.0", "::"):
        bind_to(host)
    sys.argv = [f"python -m {module}", *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
