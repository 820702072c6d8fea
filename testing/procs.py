"""The one process launcher for tests and benchmarks, and the service's start-ups.

``running`` starts a command (cwd = repo root, output to a log file) for a with-block and
stops it on exit: SIGTERM, then SIGKILL after 15 s. ``run_predictor`` and
``run_transformer`` start the two servers on free loopback ports and yield once they are
ready; ``run_service`` starts both, wired over gRPC v2.

Benchmarks ask for ``own_session=True``: the process gets its own session (a Ctrl-C in the
terminal reaches only the benchmark, which then stops them in order) and
``PR_SET_PDEATHSIG`` (SIGTERM if the benchmark dies without cleaning up, even from
SIGKILL). Tests leave it off: pytest's threads and a ``preexec_fn`` do not mix.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE_S = 15
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def python_cmd(module: str, *args: str) -> list[str]:
    """``python -m module args...`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def predictor_cmd(http_port: int | str, grpc_port: int | str, *args: str) -> list[str]:
    """The predictor's command line on these ports."""
    return python_cmd("predictor", "--http_port", str(http_port), "--grpc_port",
                      str(grpc_port), *args)


def transformer_cmd(predictor_host: str, http_port: int | str, *args: str,
                    protocol: str | None = "grpc-v2") -> list[str]:
    """The transformer's command line, wired to ``predictor_host`` (``protocol=None``: the
    transformer's own default)."""
    wire = ["--predictor_protocol", protocol] if protocol else []
    return python_cmd("transformer", "--predictor_host", predictor_host, *wire,
                      "--http_port", str(http_port), *args)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not glibc Linux: the context manager still stops the process
        pass


@contextlib.contextmanager
def running(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, log_path: Path,
            cpus: set[int] | None = None, own_session: bool = False
            ) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` for the with-block: cwd = repo root, stdout and stderr to ``log_path``,
    ``env`` over this process's environment, on the cores ``cpus`` only when given (Linux),
    in its own session when ``own_session`` (see the module's text). Stopped on exit."""
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    setup = None
    if sys.platform == "linux" and (cpus or own_session):
        def setup() -> None:  # in the child, between fork and exec
            if own_session:
                _die_with_parent()
            if cpus:
                os.sched_setaffinity(0, cpus)

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(cmd), cwd=REPO_ROOT, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=own_session,
                                preexec_fn=setup)
        try:
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after ``STOP_GRACE_S``; ignores a process that is gone."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def wait_http_ok(
    url: str, *, timeout_s: float, proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            log = log_path.read_text(errors="replace")[-4000:] if log_path else ""
            raise RuntimeError(
                f"process exited with {proc.returncode} before {url} was ready\n{log}")
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.25)
    log = log_path.read_text(errors="replace")[-4000:] if log_path else ""
    raise TimeoutError(f"{url} not ready after {timeout_s} s (last: {last})\n{log}")


@dataclass(frozen=True)
class Predictor:
    """A running predictor: gRPC ``host:port``, REST base URL, log file, process."""

    grpc: str
    http: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@contextlib.contextmanager
def run_predictor(env: Mapping[str, str], log_path: Path, *, timeout_s: float = 120,
                  grpc_port: int | None = None, cpus: set[int] | None = None,
                  own_session: bool = False) -> Iterator[Predictor]:
    """The predictor on free loopback ports (``grpc_port`` to choose that one); yields once
    its model is ready, within ``timeout_s``."""
    http_port, grpc_port = free_port(), grpc_port or free_port()
    with running(predictor_cmd(http_port, grpc_port), env=env, log_path=log_path, cpus=cpus,
                 own_session=own_session) as proc:
        http = f"http://127.0.0.1:{http_port}"
        wait_http_ok(f"{http}/v2/models/dreamsim/ready", timeout_s=timeout_s, proc=proc,
                     log_path=log_path)
        yield Predictor(grpc=f"127.0.0.1:{grpc_port}", http=http, log=log_path, proc=proc)


@dataclass(frozen=True)
class Transformer:
    """A running transformer: base URL, log file, process."""

    url: str
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextlib.contextmanager
def run_transformer(predictor_host: str, env: Mapping[str, str], log_path: Path, *,
                    wait_path: str = "/health", timeout_s: float = 120,
                    cpus: set[int] | None = None, own_session: bool = False
                    ) -> Iterator[Transformer]:
    """A transformer wired over gRPC v2 to the predictor at ``predictor_host``, on a free
    loopback port; yields once ``wait_path`` answers 200 (``/health``: the predictor is
    reachable too; ``/v2/health/live``: the process serves)."""
    port = free_port()
    with running(transformer_cmd(predictor_host, port), env=env, log_path=log_path,
                 cpus=cpus, own_session=own_session) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(url + wait_path, timeout_s=timeout_s, proc=proc, log_path=log_path)
        yield Transformer(url=url, log=log_path, proc=proc)


@dataclass(frozen=True)
class Service:
    """A running service.

    Attributes:
        url: the transformer's base URL (``/similarity``, ``/health``).
        grpc: the predictor's gRPC ``host:port``.
        health: the transformer's ``/health`` answer once ready.
        logs: the two processes' log files.
        pids: their process ids (predictor, transformer).
    """

    url: str
    grpc: str
    health: dict[str, object]
    logs: tuple[Path, Path]
    pids: tuple[int, int]


@contextlib.contextmanager
def run_service(env: Mapping[str, str], log_dir: Path, *, ready_timeout_s: float = 300
                ) -> Iterator[Service]:
    """Start predictor then transformer (each in its own session); yield once /health is
    200."""
    log_dir.mkdir(parents=True, exist_ok=True)
    plog, tlog = log_dir / "predictor.log", log_dir / "transformer.log"
    with run_predictor(env, plog, timeout_s=ready_timeout_s, own_session=True) as p, \
            run_transformer(p.grpc, env, tlog, own_session=True) as t:
        health = httpx.get(f"{t.url}/health", timeout=10).json()
        yield Service(url=t.url, grpc=p.grpc, health=health, logs=(plog, tlog),
                      pids=(p.pid, t.pid))
