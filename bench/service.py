"""The service under test: predictor and transformer as subprocesses on loopback.

Each process gets its own session (a Ctrl-C in the terminal reaches only the benchmark,
which then stops them in order) and ``PR_SET_PDEATHSIG`` (SIGTERM if the benchmark dies
without cleaning up, even from SIGKILL). On exit: SIGTERM, then SIGKILL after 15 s.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.procs import REPO_ROOT, free_port, wait_http_ok

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not glibc Linux: the context manager still stops the process
        pass


@contextlib.contextmanager
def spawn(cmd: Sequence[str], *, env: Mapping[str, str], log_path: Path,
          cpus: set[int] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` (cwd = repo root, output to ``log_path``) for the with-block, on the
    cores ``cpus`` only when given (Linux)."""
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}

    def setup() -> None:  # in the child, between fork and exec
        _die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(cmd), cwd=REPO_ROOT, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=setup if sys.platform == "linux" else None)
        try:
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 15 s; ignores a process that is already gone."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


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
def run_predictor(env: Mapping[str, str], log_path: Path, *, cpus: set[int] | None = None,
                  ready_timeout_s: float = 300) -> Iterator[tuple[str, int, str]]:
    """The predictor; yields (gRPC ``host:port``, pid, REST base URL) once its model is
    ready."""
    http_port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "predictor", "--http_port", str(http_port),
           "--grpc_port", str(grpc_port)]
    with spawn(cmd, env=env, log_path=log_path, cpus=cpus) as proc:
        wait_http_ok(f"http://127.0.0.1:{http_port}/v2/models/dreamsim/ready",
                     timeout_s=ready_timeout_s, proc=proc, log_path=log_path)
        yield f"127.0.0.1:{grpc_port}", proc.pid, f"http://127.0.0.1:{http_port}"


@contextlib.contextmanager
def run_transformer(grpc: str, env: Mapping[str, str], log_path: Path, *,
                    cpus: set[int] | None = None) -> Iterator[tuple[str, int]]:
    """A transformer wired to the predictor at ``grpc``; yields (URL, pid) once /health is
    200."""
    port = free_port()
    cmd = [sys.executable, "-m", "transformer", "--predictor_host", grpc,
           "--predictor_protocol", "grpc-v2", "--http_port", str(port)]
    with spawn(cmd, env=env, log_path=log_path, cpus=cpus) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/health", timeout_s=120, proc=proc, log_path=log_path)
        yield url, proc.pid


@contextlib.contextmanager
def run_service(env: Mapping[str, str], log_dir: Path, *, ready_timeout_s: float = 300
                ) -> Iterator[Service]:
    """Start predictor then transformer (wired over gRPC v2); yield once /health is 200."""
    log_dir.mkdir(parents=True, exist_ok=True)
    plog, tlog = log_dir / "predictor.log", log_dir / "transformer.log"
    with run_predictor(env, plog, ready_timeout_s=ready_timeout_s) as (grpc, ppid, _), \
            run_transformer(grpc, env, tlog) as (url, tpid):
        health = httpx.get(f"{url}/health", timeout=10).json()
        yield Service(url=url, grpc=grpc, health=health, logs=(plog, tlog), pids=(ppid, tpid))
