"""``make run``: the predictor and the transformer together on this machine.

First the weights: when the selected variant's files are missing from MODEL_CACHE_DIR,
they are fetched (``predictor.weights.ensure_weights``: progress with bytes, rate and time
left, everything verified) unless ``AUTO_FETCH_WEIGHTS=false``; when that fails (no
internet, say) it stops, saying which files are missing, where they come from and how to
lay them out by hand. Only this local runner fetches: the predictor itself never does
(the images and the cluster keep their explicit weights step).

Before anything (the weights included) it checks that its three ports are free on
BIND_HOST: gRPC servers set SO_REUSEPORT, so a second predictor on a port in use would start
without an error and the kernel would split connections between two models.

Then it starts ``python -m predictor`` (gRPC on PREDICTOR_GRPC_PORT, REST on PREDICTOR_HTTP_PORT)
and ``python -m transformer`` (the public API on PORT, default 8080), wired over gRPC v2,
with every setting taken from the environment, all bound to BIND_HOST (127.0.0.1 by default:
the predictor's REST port serves KServe's inference routes without the transformer's limits;
``BIND_HOST=0.0.0.0`` opens the three ports to the network). It says ``run: ready`` only when
this run's own processes hold the ports and answer; Ctrl-C or SIGTERM at any moment (the
weights download included) stops everything with one line; if either process dies, the
other is stopped too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the project's packages are beside it
    sys.path.insert(0, str(ROOT))

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
PORT_VARS = "PORT / PREDICTOR_GRPC_PORT / PREDICTOR_HTTP_PORT"


class Stop(BaseException):
    """Ctrl-C or SIGTERM: a BaseException, so that no ``except Exception`` on the way (the
    weights download, say) mistakes it for a failure."""


def _raise_stop(signum: int, _frame: object) -> None:
    raise Stop(signum)


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on ``port`` where ``host`` would bind it.

    A plain bind (SO_REUSEADDR, so a closed connection in TIME_WAIT does not count, but no
    SO_REUSEPORT) fails on Linux against any listening socket on that port whose address
    overlaps, the wildcard and a SO_REUSEPORT gRPC server included.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _listening_inodes(port: int) -> set[str] | None:
    """Inodes of the sockets listening on TCP ``port`` (any address); None without /proc."""
    found: set[str] = set()
    seen = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        seen = True
        for line in lines:
            cols = line.split()
            # local_address is ADDR:PORT in hex; state 0A is LISTEN.
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                found.add(cols[9])
    return found if seen else None


def owns_port(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on ``port`` (Linux: /proc). Where
    /proc cannot tell, the process being alive is all that can be checked: True."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return True
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return False
    held = set()
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                held.add(target[len("socket:["):-1])
    return bool(inodes & held)


def _port(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    if not value.isdigit() or not 0 < int(value) < 65536:
        sys.exit(f"run: {name}={value!r} is not a TCP port")
    return int(value)


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value not in _TRUE | _FALSE:
        sys.exit(f"run: {name}={value!r} is not a boolean (true or false)")
    return value in _TRUE


def missing_pieces(model_type: str, cache_dir: Path) -> list[tuple[str, str]]:
    """What is missing from ``cache_dir``: ``(url, where it goes)`` per download.

    Only what is missing: the release archive when any of its files is, the torch.hub
    backbone when it is (an ensemble user whose DINO file is there is not told to fetch
    it again).
    """
    from predictor.layout import ADAPTER_WEIGHT_FILES, get_variant
    from predictor.weights import BASE_URL_ENV, sources

    variant = get_variant(model_type)
    where = sources(variant, os.environ.get(BASE_URL_ENV) or None)
    hub_path = variant.hub_file.path if variant.hub_file is not None else None
    release_missing = any(
        not (cache_dir / f).is_file() for f in variant.required_files if f != hub_path
    ) or not any((cache_dir / variant.lora_dir / f).is_file() for f in ADAPTER_WEIGHT_FILES)
    pieces = []
    if release_missing:
        pieces.append((where.release_url, f"unzip into {cache_dir}/ (it holds "
                                          f"{', '.join(variant.release_files)})"))
    if hub_path is not None and where.hub_url is not None and not (cache_dir / hub_path).is_file():
        pieces.append((where.hub_url, f"save as {cache_dir / hub_path}"))
    return pieces


def _offline_block(model_type: str, cache_dir: Path, why: str) -> str:
    """The one message for weights that are missing and cannot be fetched from here."""
    from predictor.weights import BASE_URL_ENV

    return "\n".join([
        f"cannot start: the DreamSim weights for MODEL_TYPE={model_type} are not complete in "
        f"{cache_dir}, and {why}.",
        "Download on a machine with internet access, and place here:",
        *(f"  {url}\n    {where}" for url, where in missing_pieces(model_type, cache_dir)),
        f"Or set {BASE_URL_ENV} to a mirror that serves these files under the same names, or "
        "copy an existing upstream dreamsim cache (dreamsim(cache_dir=...)) there. Then run "
        "`make run` again (README, 'Getting the weights').",
    ])


def prepare_weights(model_type: str, cache_dir: Path, *, auto_fetch: bool) -> str | None:
    """Make sure the predictor will find its weights; fetch them when missing.

    Args:
        model_type: ``MODEL_TYPE``.
        cache_dir: ``MODEL_CACHE_DIR``.
        auto_fetch: fetch missing weights (``AUTO_FETCH_WEIGHTS``).

    Returns:
        None when the predictor can start (weights present, fetched, or not fetched on
        purpose: the predictor then stops with its own message); else why not, with what
        to do by hand, as one block.
    """
    from predictor.checkpoint import WeightsError, check_files
    from predictor.layout import get_variant
    from predictor.weights import FetchError, Unreachable, ensure_weights

    try:
        check_files(cache_dir, get_variant(model_type))
    except ValueError as e:  # unknown MODEL_TYPE: the predictor says it at start-up
        return str(e)
    except WeightsError:
        pass
    else:
        return None
    if not auto_fetch:
        print("run: the weights are missing and AUTO_FETCH_WEIGHTS is off: not fetching them",
              flush=True)
        return None
    names = ", ".join(url.rsplit("/", 1)[-1] for url, _ in missing_pieces(model_type, cache_dir))
    print(f"run: fetching the DreamSim weights for MODEL_TYPE={model_type} into {cache_dir} "
          f"({names}; AUTO_FETCH_WEIGHTS=false turns this off)", flush=True)
    started = time.monotonic()
    try:
        ensure_weights(model_type=model_type, cache_dir=cache_dir, progress=True)
        check_files(cache_dir, get_variant(model_type))
    except Unreachable as e:
        return _offline_block(model_type, cache_dir, f"{e.host} cannot be reached: {e.reason}")
    except (FetchError, WeightsError, OSError) as e:
        return _offline_block(model_type, cache_dir, f"fetching them failed: {e}")
    print(f"run: weights for {model_type} fetched and verified in {cache_dir} "
          f"({time.monotonic() - started:.0f} s)", flush=True)
    return None


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def serving(procs: dict[str, subprocess.Popen[bytes]], ports: dict[str, list[int]],
            health_url: str) -> bool:
    """This run's own processes serve: each holds its ports and the transformer's /health
    (which asks the predictor) answers 200. Another instance answering on the same port, or a
    predictor that has not loaded yet, is not "ready"."""
    for name, proc in procs.items():
        if proc.poll() is not None or not all(owns_port(proc.pid, p) for p in ports[name]):
            return False
    return _ready(health_url)


class Output:
    """Copies the children's output to ours, line by line, until the run stops: after
    Ctrl-C nothing the children print while shutting down (tracebacks of an interrupted
    start-up included) reaches the terminal, only the one closing line."""

    def __init__(self) -> None:
        self.quiet = False
        self._threads: list[threading.Thread] = []

    def follow(self, stream: IO[bytes]) -> None:
        thread = threading.Thread(target=self._copy, args=(stream,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _copy(self, stream: IO[bytes]) -> None:
        out = sys.stdout.buffer
        for line in iter(stream.readline, b""):
            if not self.quiet:
                out.write(line)
                out.flush()

    def join(self, timeout_s: float) -> None:
        for thread in self._threads:
            thread.join(timeout=timeout_s)


def _stop_children(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for p in procs.values():
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main() -> int:
    # Ctrl-C and SIGTERM end the run quietly from the first line on (weights step included).
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    output = Output()
    try:
        return _run(procs, output)
    except Stop:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        output.quiet = True
        _stop_children(procs)
        print("run: stopped", flush=True)
        return 130


def _run(procs: dict[str, subprocess.Popen[bytes]], output: Output) -> int:
    port = _port("PORT", 8080)
    grpc_port = _port("PREDICTOR_GRPC_PORT", 8081)
    rest_port = _port("PREDICTOR_HTTP_PORT", 8085)
    host = os.environ.get("BIND_HOST", "").strip() or "127.0.0.1"
    if len({port, grpc_port, rest_port}) != 3:
        sys.exit("run: PORT, PREDICTOR_GRPC_PORT and PREDICTOR_HTTP_PORT must differ")
    try:
        busy = [p for p in (port, grpc_port, rest_port) if port_in_use(host, p)]
    except OSError as e:  # not an address of this machine, say
        sys.exit(f"run: cannot bind BIND_HOST={host!r}: {e}")
    if busy:
        sys.exit(f"run: port {busy[0]} is in use: set {PORT_VARS}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BIND_HOST": host}
    env.setdefault("MODEL_CACHE_DIR", str(ROOT / "models"))
    env.setdefault("MODEL_TYPE", "dino_vitb16")
    problem = prepare_weights(env["MODEL_TYPE"], Path(env["MODEL_CACHE_DIR"]),
                              auto_fetch=_flag("AUTO_FETCH_WEIGHTS", True))
    if problem is not None:
        print(f"run: {problem}", file=sys.stderr, flush=True)
        return 1
    py, bound = sys.executable, str(ROOT / "scripts" / "bound_child.py")
    where = "all interfaces" if host in ("0.0.0.0", "::") else host
    print(f"run: predictor (MODEL_TYPE={env['MODEL_TYPE']}, "
          f"DEVICE={env.get('DEVICE', 'cuda')}, weights in {env['MODEL_CACHE_DIR']}) "
          f"on gRPC :{grpc_port} / REST :{rest_port}, bound to {where}", flush=True)
    # Own sessions: a Ctrl-C in the terminal reaches this process only, which stops the
    # children itself (SIGTERM) instead of both printing an interrupted start-up.
    for name, args in (
            ("predictor", ["--http_port", str(rest_port), "--grpc_port", str(grpc_port)]),
            ("transformer", ["--predictor_host", f"127.0.0.1:{grpc_port}",
                             "--predictor_protocol", "grpc-v2", "--http_port", str(port)])):
        proc = subprocess.Popen([py, bound, name, *args], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        procs[name] = proc
        assert proc.stdout is not None
        output.follow(proc.stdout)

    ports = {"predictor": [grpc_port, rest_port], "transformer": [port]}
    base = f"http://127.0.0.1:{port}"
    announced = False
    code = 0
    while True:
        dead = [(n, p) for n, p in procs.items() if p.poll() is not None]
        if dead:
            name, p = dead[0]
            code = p.returncode or 1
            output.join(timeout_s=2)  # its last words first
            print(f"run: the {name} exited with code {p.returncode}; stopping", flush=True)
            break
        if not announced and serving(procs, ports, f"{base}/health"):
            announced = True
            print(f"run: ready. POST {base}/similarity, POST {base}/embed, GET {base}/health "
                  "(Ctrl-C stops)", flush=True)
        time.sleep(0.5)
    output.quiet = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _stop_children(procs)
    print("run: stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
