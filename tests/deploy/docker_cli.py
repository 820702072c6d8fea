"""The Docker CLI for the image tests (tests/deploy/test_images.py): a real engine, no fakes.

Builds with the classic builder (``DOCKER_BUILDKIT=0``): BuildKit would fetch the
``# syntax=docker/dockerfile:1`` frontend from a registry, and none is reachable here
(NOTES §7); the classic builder reads that line as a comment and builds the same stages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from testing.procs import REPO_ROOT

BUILD_ENV = {**os.environ, "DOCKER_BUILDKIT": "0"}


def engine_problem() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    if shutil.which("docker") is None:
        return "no docker CLI on PATH (`make image-test` installs docker.io and starts dockerd)"
    try:
        proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if proc.returncode != 0 or not proc.stdout.strip():
        why = (proc.stderr.strip().splitlines() or ["no server version"])[-1]
        return f"no Docker engine answers `docker info` ({why}); `make image-test` starts one"
    return None


def docker(*args: str, check: bool = True, timeout: float = 120,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``docker args...``; on failure the assertion shows its output."""
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          input=input, env=BUILD_ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def build(dockerfile: str, tag: str, log: Path, *, timeout: float = 3600) -> float:
    """``docker build -f dockerfile -t tag .`` from the repo root; returns seconds taken."""
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run(["docker", "build", "-f", dockerfile, "-t", tag, "."],
                              cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                              env=BUILD_ENV, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"building {tag} failed:\n{log.read_text()[-5000:]}")
    return time.monotonic() - t0


def inspect(name: str, kind: str = "container") -> dict[str, Any]:
    out: list[dict[str, Any]] = json.loads(docker(kind, "inspect", name).stdout)
    return out[0]


def image_size(tag: str) -> int:
    """Bytes the image takes unpacked (what `docker images` shows)."""
    return int(inspect(tag, "image")["Size"])


def published_port(name: str, container_port: int) -> int:
    """The 127.0.0.1 port that ``container_port`` of ``name`` is published on."""
    out = docker("port", name, f"{container_port}/tcp").stdout.split()
    return int(out[0].rsplit(":", 1)[1])


def logs(name: str) -> str:
    proc = docker("logs", "--tail", "60", name, check=False)
    return proc.stdout + proc.stderr


def remove(*names: str) -> None:
    """Remove containers (running or not) and what ``docker run`` made for them."""
    if names:
        docker("rm", "-f", "-v", *names, check=False, timeout=120)


def run_detached(image: str, *, name: str, options: Sequence[str] = (),
                 entrypoint: str | None = None, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> None:
    """``docker run -d`` with ``options`` placed before the image."""
    cmd = ["run", "-d", "--name", name, *options]
    for key, value in (env or {}).items():
        cmd += ["-e", f"{key}={value}"]
    if entrypoint is not None:
        cmd += ["--entrypoint", entrypoint]
    docker(*cmd, image, *args)


def health_status(name: str) -> str:
    """The HEALTHCHECK status: starting, healthy or unhealthy."""
    return str(inspect(name)["State"]["Health"]["Status"])
