"""``make run``: the predictor and the transformer together on this machine.

Starts ``python -m predictor`` (gRPC on PREDICTOR_GRPC_PORT, REST on PREDICTOR_HTTP_PORT)
and ``python -m transformer`` (the public API on PORT, default 8080), wired over gRPC v2,
with every setting taken from the environment. Says where it listens once the model is
loaded; Ctrl-C or SIGTERM stops both; if either process dies, the other is stopped too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _port(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    if not value.isdigit() or not 0 < int(value) < 65536:
        sys.exit(f"run: {name}={value!r} is not a TCP port")
    return int(value)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main() -> int:
    port = _port("PORT", 8080)
    grpc_port = _port("PREDICTOR_GRPC_PORT", 8081)
    rest_port = _port("PREDICTOR_HTTP_PORT", 8085)
    if len({port, grpc_port, rest_port}) != 3:
        sys.exit("run: PORT, PREDICTOR_GRPC_PORT and PREDICTOR_HTTP_PORT must differ")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("MODEL_CACHE_DIR", str(ROOT / "models"))
    py = sys.executable
    print(f"run: predictor (MODEL_TYPE={env.get('MODEL_TYPE', 'dino_vitb16')}, "
          f"DEVICE={env.get('DEVICE', 'cuda')}, weights in {env['MODEL_CACHE_DIR']}) "
          f"on gRPC :{grpc_port} / REST :{rest_port}", flush=True)
    procs = [subprocess.Popen([py, "-m", "predictor", "--http_port", str(rest_port),
                               "--grpc_port", str(grpc_port)], cwd=ROOT, env=env)]
    procs.append(subprocess.Popen([py, "-m", "transformer", "--predictor_host",
                                   f"127.0.0.1:{grpc_port}", "--predictor_protocol", "grpc-v2",
                                   "--http_port", str(port)], cwd=ROOT, env=env))

    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    announced = False
    code = 0
    while not stopping:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            code = dead[0].returncode or 1
            name = "predictor" if dead[0] is procs[0] else "transformer"
            print(f"run: the {name} exited with code {dead[0].returncode}; stopping", flush=True)
            break
        if not announced and _ready(f"http://127.0.0.1:{port}/health"):
            announced = True
            print(f"run: ready. POST http://127.0.0.1:{port}/similarity, "
                  f"GET http://127.0.0.1:{port}/health (Ctrl-C stops)", flush=True)
        time.sleep(0.5)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    print("run: stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
