"""``make run`` (``scripts/run_local.py``) fetches missing weights itself, and only it does.

A local HTTP server (the stdlib's, serving a folder) stands in for the release hosts
through ``WEIGHTS_BASE_URL``: it holds the variant's release zip and torch.hub backbone
under their upstream file names, made from the suite's random-weight checkpoint in the
upstream layout. The runner starts on an empty cache dir and must fetch, verify and serve.
"""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath

import httpx
import pytest

from predictor.layout import VARIANTS
from tests.procs import REPO_ROOT, free_port, python_cmd, running, wait_http_ok
from tests.test_e2e import b64, distinct_images

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

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(Handler, directory=str(mirror_dir)))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


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
    assert "fetching them now (AUTO_FETCH_WEIGHTS=false turns this off)" in out
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
    with running(python_cmd("predictor", "--http_port", env["PREDICTOR_HTTP_PORT"],
                            "--grpc_port", env["PREDICTOR_GRPC_PORT"]),
                 env=env, log_path=log) as proc:
        assert proc.wait(timeout=120) == 2
    assert "are incomplete" in log.read_text()
    assert mirror.paths == [] and not (tmp_path / "models").exists()


def test_bad_auto_fetch_value_is_refused(tmp_path: Path) -> None:
    env = run_env(tmp_path / "models", "http://127.0.0.1:9", AUTO_FETCH_WEIGHTS="maybe")
    proc = subprocess.run(RUN, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and "AUTO_FETCH_WEIGHTS='maybe'" in proc.stderr
