"""``make run``: the predictor and the transformer together on this machine.

First the weights: when the selected variant's files are missing from MODEL_CACHE_DIR,
they are fetched (``predictor.weights.ensure_weights``: progress with bytes, rate and time
left, everything verified) unless ``AUTO_FETCH_WEIGHTS=false``; when that fails (no
internet, say) it stops, saying which files are missing, where they come from and how to
lay them out by hand. Only this local runner fetches: the predictor itself never does
(the images and the cluster keep their explicit weights step).

Then it starts ``python -m predictor`` (gRPC on PREDICTOR_GRPC_PORT, REST on PREDICTOR_HTTP_PORT)
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
if str(ROOT) not in sys.path:  # run as a script: the project's packages are beside it
    sys.path.insert(0, str(ROOT))

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


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


def main() -> int:
    port = _port("PORT", 8080)
    grpc_port = _port("PREDICTOR_GRPC_PORT", 8081)
    rest_port = _port("PREDICTOR_HTTP_PORT", 8085)
    if len({port, grpc_port, rest_port}) != 3:
        sys.exit("run: PORT, PREDICTOR_GRPC_PORT and PREDICTOR_HTTP_PORT must differ")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("MODEL_CACHE_DIR", str(ROOT / "models"))
    env.setdefault("MODEL_TYPE", "dino_vitb16")
    problem = prepare_weights(env["MODEL_TYPE"], Path(env["MODEL_CACHE_DIR"]),
                              auto_fetch=_flag("AUTO_FETCH_WEIGHTS", True))
    if problem is not None:
        print(f"run: {problem}", file=sys.stderr, flush=True)
        return 1
    py = sys.executable
    print(f"run: predictor (MODEL_TYPE={env['MODEL_TYPE']}, "
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
                  f"POST http://127.0.0.1:{port}/embed, "
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
