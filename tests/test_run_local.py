"""``make run`` (``scripts/run_local.py``) fetches missing weights itself, and only it does.

A local HTTP server (the stdlib's, serving a folder) stands in for the release hosts
through ``WEIGHTS_BASE_URL``: it holds the variant's release zip and torch.hub backbone
under their upstream file names, made from the suite's random-weight checkpoint in the
upstream layout. The runner starts on an empty cache dir and must fetch, verify and serve.
"""

from __future__ import annotations

import http.server
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath

import httpx
import pytest

from predictor.layout import VARIANTS
from testing.http_host import Handler as QuietHandler
from testing.http_host import serving
from testing.images import b64, distinct_images
from testing.procs import REPO_ROOT, free_port, predictor_cmd, running, wait_http_ok

pytestmark = pytest.mark.slow

VARIANT = VARIANTS["dino_vitb16"]


def _name(url: str) -> str:
    return PurePosixPath(httpx.URL(url).path).name


@dataclass
class Mirror:
    """A folder served over HTTP; ``paths`` records every GET."""

    url: str
    paths: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def mirror_dir(dino_weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release zip and the backbone of dino_vitb16, as upstream publishes them."""
    folder = tmp_path_factory.mktemp("mirror")
    with zipfile.ZipFile(folder / _name(VARIANT.release_zip_url), "w") as archive:
        for name in VARIANT.release_files:
            source = dino_weights_dir / name
            for path in [source] if source.is_file() else sorted(source.rglob("*")):
                archive.write(path, path.relative_to(dino_weights_dir).as_posix())
    assert VARIANT.hub_file is not None
    backbone = dino_weights_dir / VARIANT.hub_file.path
    target = folder / _name(VARIANT.hub_file.url)
    try:
        os.link(backbone, target)  # 344 MB: no copy where a link will do
    except OSError:
        shutil.copyfile(backbone, target)
    return folder


@pytest.fixture
def mirror(mirror_dir: Path) -> Iterator[Mirror]:
    state = Mirror(url="")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            state.paths.append(self.path)

    with serving(partial(Handler, directory=str(mirror_dir))) as state.url:
        yield state


def run_env(cache: Path, base_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AUTO_FETCH_WEIGHTS"}
    env.update({"MODEL_CACHE_DIR": str(cache), "MODEL_TYPE": VARIANT.name, "DEVICE": "cpu",
                "WEIGHTS_BASE_URL": base_url, "PORT": str(free_port()),
                "PREDICTOR_GRPC_PORT": str(free_port()),
                "PREDICTOR_HTTP_PORT": str(free_port()), "PYTHONUNBUFFERED": "1", **extra})
    return env


RUN = [sys.executable, "scripts/run_local.py"]


def test_fetches_verifies_and_serves_on_an_empty_cache(mirror: Mirror, tmp_path: Path,
                                                       dino_weights_dir: Path) -> None:
    cache, log = tmp_path / "models", tmp_path / "run.log"
    env = run_env(cache, mirror.url)
    with running(RUN, env=env, log_path=log) as proc:
        base = f"http://127.0.0.1:{env['PORT']}"
        wait_http_ok(f"{base}/health", timeout_s=300, proc=proc, log_path=log)
        r = httpx.post(f"{base}/embed", timeout=120,
                       json={"images": [{"image": b64(distinct_images(1, size=96)[0])}]})
        assert r.status_code == 200, r.text
        assert r.json()["dim"] == VARIANT.embedding_dim
    out = log.read_text()
    assert "run: fetching the DreamSim weights for MODEL_TYPE=dino_vitb16" in out
    assert "AUTO_FETCH_WEIGHTS=false turns this off" in out
    # progress: bytes, rate and time left, for the 344 MB backbone
    assert any("MB /" in line and "MB/s" in line and "left" in line
               for line in out.splitlines()), out[-3000:]
    assert f"fetched and verified in {cache}" in out
    assert sorted(mirror.paths) == sorted(
        f"/{_name(u)}" for u in (VARIANT.release_zip_url, VARIANT.hub_file.url))  # type: ignore[union-attr]
    assert VARIANT.hub_file is not None
    fetched = cache / VARIANT.hub_file.path
    assert fetched.read_bytes() == (dino_weights_dir / VARIANT.hub_file.path).read_bytes()
    assert not [p for p in cache.rglob("*") if p.suffix in (".zip", ".part")]


def test_offline_stops_with_files_urls_and_layout(tmp_path: Path) -> None:
    closed_port = free_port()
    closed = f"http://127.0.0.1:{closed_port}/mirror"
    cache = tmp_path / "models"
    proc = subprocess.run(RUN, cwd=REPO_ROOT, env=run_env(cache, closed), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "run: predictor (" not in out  # nothing started
    assert f"127.0.0.1:{closed_port} cannot be reached: connection refused" in out
    zip_url = f"{closed}/{_name(VARIANT.release_zip_url)}"
    assert VARIANT.hub_file is not None
    hub_url = f"{closed}/{_name(VARIANT.hub_file.url)}"
    for release_file in VARIANT.release_files:
        assert release_file in out
    assert "unzip into" in out and f"save as {cache / VARIANT.hub_file.path}" in out
    # one block: each URL named once in it (plus once in the "fetching" line), no advice to
    # run the command that just failed, no traceback
    block = proc.stderr
    assert block.count(zip_url) == 1 and block.count(hub_url) == 1, block
    assert block.count("cannot start") == 1 and "make weights" not in block
    assert "python -m predictor.weights" not in block and "Traceback" not in out


def test_offline_lists_only_what_is_missing(dino_weights_dir: Path, tmp_path: Path) -> None:
    """A user whose torch.hub backbone is already in place (an ensemble user who ran
    dino_vitb16 before, say) is not told to fetch it again."""
    assert VARIANT.hub_file is not None
    cache = tmp_path / "models"
    (cache / VARIANT.hub_file.path).parent.mkdir(parents=True)
    shutil.copy(dino_weights_dir / VARIANT.hub_file.path, cache / VARIANT.hub_file.path)
    closed = f"http://127.0.0.1:{free_port()}/mirror"
    proc = subprocess.run(RUN, cwd=REPO_ROOT, env=run_env(cache, closed), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert f"{closed}/{_name(VARIANT.release_zip_url)}" in proc.stderr
    assert _name(VARIANT.hub_file.url) not in proc.stdout + proc.stderr


def test_auto_fetch_off_leaves_the_predictors_message(mirror: Mirror, tmp_path: Path) -> None:
    env = run_env(tmp_path / "models", mirror.url, AUTO_FETCH_WEIGHTS="false")
    proc = subprocess.run(RUN, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert "AUTO_FETCH_WEIGHTS is off" in out
    assert "are incomplete" in out and "make weights" in out  # the predictor's own message
    assert mirror.paths == []


def test_the_predictor_itself_never_fetches(mirror: Mirror, tmp_path: Path) -> None:
    env = run_env(tmp_path / "models", mirror.url, AUTO_FETCH_WEIGHTS="true")
    log = tmp_path / "predictor.log"
    with running(predictor_cmd(env["PREDICTOR_HTTP_PORT"], env["PREDICTOR_GRPC_PORT"]),
                 env=env, log_path=log) as proc:
        assert proc.wait(timeout=120) == 2
    assert "are incomplete" in log.read_text()
    assert mirror.paths == [] and not (tmp_path / "models").exists()


def test_bad_auto_fetch_value_is_refused(tmp_path: Path) -> None:
    env = run_env(tmp_path / "models", "http://127.0.0.1:9", AUTO_FETCH_WEIGHTS="maybe")
    proc = subprocess.run(RUN, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and "AUTO_FETCH_WEIGHTS='maybe'" in proc.stderr


# ---------------------------------------------------------------- issue 23: ports, ready,
# binding, Ctrl-C


def _listen(port: int, *, reuseport: bool) -> socket.socket:
    """A listening socket on 127.0.0.1:port, SO_REUSEPORT like a gRPC server when asked."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


@pytest.mark.parametrize("var", ["PORT", "PREDICTOR_GRPC_PORT", "PREDICTOR_HTTP_PORT"])
def test_a_port_in_use_stops_before_anything_starts(tmp_path: Path, var: str) -> None:
    """gRPC's SO_REUSEPORT would let a second predictor share a busy port silently (two
    models answering one service): the run must refuse before fetching or starting."""
    closed = f"http://127.0.0.1:{free_port()}/mirror"
    env = run_env(tmp_path / "models", closed)
    with _listen(int(env[var]), reuseport=True):
        proc = subprocess.run(RUN, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (f"run: port {env[var]} is in use: set PORT / PREDICTOR_GRPC_PORT / "
            "PREDICTOR_HTTP_PORT") in out
    assert "fetching" not in out and "run: predictor (" not in out, out
    assert not (tmp_path / "models").exists()


def test_port_check_and_ownership_helpers() -> None:
    """The runner's own checks, on real sockets: a listener makes its port busy; only the
    process holding the listening socket owns the port."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import run_local
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))
    port = free_port()
    assert not run_local.port_in_use("127.0.0.1", port)
    with _listen(port, reuseport=False):
        assert run_local.port_in_use("127.0.0.1", port)
        assert run_local.owns_port(os.getpid(), port)
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert not run_local.owns_port(other.pid, port)
        finally:
            other.kill()
            other.wait()
    assert not run_local.port_in_use("127.0.0.1", port)


def _listeners(ports: set[int]) -> dict[int, set[str]]:
    """Addresses listening on ``ports``, from /proc/net/tcp and tcp6."""
    out: dict[int, set[str]] = {p: set() for p in ports}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            addr, port_hex = cols[1].rsplit(":", 1)
            if cols[3] == "0A" and int(port_hex, 16) in ports:
                raw = bytes.fromhex(addr)
                # /proc writes each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                ip = ipaddress.ip_address(words)
                # gRPC listens on an IPv6 socket for 127.0.0.1 too: ::ffff:127.0.0.1.
                mapped = getattr(ip, "ipv4_mapped", None)
                out[int(port_hex, 16)].add(str(mapped or ip))
    return out


def _lines_until(proc: subprocess.Popen[str], needle: str, seen: list[str],
                 timeout_s: float) -> None:
    """Read ``proc``'s output into ``seen`` until a line holds ``needle``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return
    raise AssertionError(f"no {needle!r} in:\n{''.join(seen)[-3000:]}")


def _start(env: dict[str, str]) -> subprocess.Popen[str]:
    """The runner in its own session, as a terminal runs it (Ctrl-C goes to the group)."""
    return subprocess.Popen(RUN, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _quiet_stop(after: list[str]) -> None:
    """What follows a Ctrl-C: ``run: stopped`` last, once, and nothing that reports a
    failure. Start-up log lines the children wrote before the signal may still be in the
    pipe (the test reads them only now), so they are allowed before it."""
    lines = [line.strip() for line in after if line.strip()]
    assert lines and lines[-1] == "run: stopped" and lines.count("run: stopped") == 1, after
    for line in lines:
        assert not any(word in line for word in (
            "Traceback", "KeyboardInterrupt", "Error", "Exception", "exited with")), after


def _ctrl_c(proc: subprocess.Popen[str], seen: list[str]) -> list[str]:
    """SIGINT to the runner's whole process group (what Ctrl-C does); the lines after it."""
    before = len(seen)
    os.killpg(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    seen.extend(rest.splitlines(keepends=True))
    return seen[before:]


def test_binds_loopback_by_default_and_says_ready_when_serving(
        tmp_path: Path, dino_weights_dir: Path) -> None:
    """All three ports on 127.0.0.1 only (the predictor's REST inference routes have none
    of the transformer's limits); ready once the run's own processes answer; Ctrl-C then
    stops with one line."""
    env = run_env(dino_weights_dir, "http://127.0.0.1:9")
    ports = {int(env[v]) for v in ("PORT", "PREDICTOR_GRPC_PORT", "PREDICTOR_HTTP_PORT")}
    proc = _start(env)
    seen: list[str] = []
    try:
        _lines_until(proc, "run: ready.", seen, timeout_s=300)
        assert httpx.get(f"http://127.0.0.1:{env['PORT']}/health", timeout=10).json()[
            "model_loaded"] is True
        assert _listeners(ports) == {p: {"127.0.0.1"} for p in ports}
        after = _ctrl_c(proc, seen)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert [line.strip() for line in after if line.strip()] == ["run: stopped"], after
    assert proc.returncode == 130


def test_not_ready_when_another_process_answers(tmp_path: Path,
                                                dino_weights_dir: Path) -> None:
    """Someone takes PORT after the check and answers /health 200 there: the transformer
    cannot bind, and the run must not say it is ready (it used to, from the other
    instance's answer)."""
    env = run_env(dino_weights_dir, "http://127.0.0.1:9")
    port = int(env["PORT"])
    proc = _start(env)
    seen: list[str] = []
    try:
        _lines_until(proc, "run: predictor (", seen, timeout_s=60)

        class Healthy(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.reply(200, b"{}")

        with serving(Healthy, port=port):
            rest, _ = proc.communicate(timeout=300)  # the transformer fails; the run stops
        seen.append(rest)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = "".join(seen)
    assert "run: ready" not in out, out[-3000:]
    assert "run: the transformer exited" in out and proc.returncode != 0, out[-3000:]


def test_ctrl_c_during_start_up_stops_quietly(tmp_path: Path, dino_weights_dir: Path) -> None:
    """Ctrl-C while both children start (imports, model load): one line, no tracebacks."""
    env = run_env(dino_weights_dir, "http://127.0.0.1:9")
    proc = _start(env)
    seen: list[str] = []
    try:
        _lines_until(proc, "run: predictor (", seen, timeout_s=60)
        time.sleep(3)  # mid-import, mid-load
        after = _ctrl_c(proc, seen)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _quiet_stop(after)
    assert "Traceback" not in "".join(seen)
    assert proc.returncode == 130


class _Trickle(QuietHandler):
    """A release host on a slow link: announces 50 MB, then sends 64 kB a second."""

    def do_GET(self) -> None:  # noqa: N802
        self.trickle(b"\0" * 65536, every_s=1, for_s=600,
                     headers={"Content-Length": str(50_000_000)})


def test_ctrl_c_during_the_weights_download_stops_quietly(tmp_path: Path) -> None:
    with serving(_Trickle) as base:
        env = run_env(tmp_path / "models", base)
        proc = _start(env)
        seen: list[str] = []
        try:
            _lines_until(proc, "run: fetching the DreamSim weights", seen, timeout_s=60)
            time.sleep(3)  # downloading
            after = _ctrl_c(proc, seen)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    _quiet_stop(after)
    assert "Traceback" not in "".join(seen) and proc.returncode == 130
