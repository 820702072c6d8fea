"""The client against the real service on loopback (predictor + transformer processes on a
random-weight checkpoint, ``tests/conftest.py``): scores, overload and a predictor
restart, kill and resume of the CLI, throughput, and the report in a real browser."""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from PIL import Image
from similarity_client import Pair, RetryPolicy, SimilarityClient
from similarity_client.cli import main
from similarity_client.output import read_records

from bench.client_throughput import measure
from testing.http_host import ImageHost
from testing.images import image_files
from testing.procs import REPO_ROOT, free_port, predictor_cmd, running, wait_http_ok
from tests.conftest import STRICT_ENV, Photo, encode, start_transformer

pytestmark = pytest.mark.slow
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_scores_equal_the_services_own_answer(service_url: str, image_host: ImageHost,
                                             tmp_path: Path) -> None:
    images = image_files(tmp_path, 8, seed=1)
    url = image_host.add("client-equal.png", images[0].read_bytes())
    pairs = [Pair(images[i], images[(3 * i + 1) % 8], f"eq{i}") for i in range(8)]
    pairs.append(Pair(images[2], url, "eq-url"))  # passed through; the service fetches it
    direct = httpx.post(f"{service_url}/similarity", timeout=300, json={"pairs": [
        {"reference_image": b64(Path(str(p.reference))),
         "generated_image": p.generated if p.generated == url else b64(Path(str(p.generated))),
         "pair_id": p.pair_id} for p in pairs]})
    assert direct.status_code == 200, direct.text
    expected = {s["pair_id"]: s for s in direct.json()["scores"]}

    broken = tmp_path / "broken.png"
    broken.write_bytes(images[3].read_bytes()[:60])  # truncated: the service says why
    client = SimilarityClient(service_url, chunk_size=3, concurrency=2)
    results = {r.pair_id: r for r in client.score([*pairs, Pair(broken, images[1], "bad")])}
    assert set(results) == {*expected, "bad"}
    for pair_id, score in expected.items():
        assert results[pair_id].distance == pytest.approx(score["distance"], abs=1e-6)
        assert results[pair_id].similarity == pytest.approx(score["similarity"], abs=1e-6)
    assert results["bad"].field == "reference_image" and results["bad"].error
    assert not results["bad"].retryable
    print(f"\nclient vs /similarity: max |diff| = "
          f"{max(abs(results[k].distance - s['distance']) for k, s in expected.items()):.1e};"
          f" bad pair: {results['bad'].error}")


def test_learns_the_pair_limit_from_the_real_413(strict_url: str, tmp_path: Path) -> None:
    """The service's own 413 (MAX_PAIRS_PER_REQUEST=4 in the strict configuration) sets the
    client's chunk size: the structured ``limit`` field, not a copy of its message."""
    limit = int(STRICT_ENV["MAX_PAIRS_PER_REQUEST"])
    images = image_files(tmp_path, 4, seed=5, size=48)  # under the strict 50 kB
    pairs = [Pair(images[i % 4], images[(i + 1) % 4], f"lim{i}") for i in range(limit + 3)]
    client = SimilarityClient(strict_url, chunk_size=limit + 3, concurrency=1)
    results = list(client.score(pairs))
    assert sorted(str(r.pair_id) for r in results) == sorted(str(p.pair_id) for p in pairs)
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    assert client.stats.pair_limit == limit and client.stats.splits == 1


def test_overload_and_a_predictor_restart_end_with_every_pair_scored_once(
        dino_weights_dir: Path, tmp_path: Path) -> None:
    grpc_port, http_port = free_port(), free_port()
    env = {"MODEL_CACHE_DIR": str(dino_weights_dir), "DEVICE": "cpu", "MODEL_TYPE": "dino_vitb16"}
    cmd = predictor_cmd(http_port, grpc_port)
    ready = f"http://127.0.0.1:{http_port}/v2/models/dreamsim/ready"
    images = image_files(tmp_path, 20, seed=2)
    pairs = [Pair(images[2 * i], images[2 * i + 1], i) for i in range(10)]
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(running(cmd, env=env, log_path=tmp_path / "pred1.log"))
        wait_http_ok(ready, timeout_s=180, proc=first, log_path=tmp_path / "pred1.log")
        url = stack.enter_context(start_transformer(
            f"127.0.0.1:{grpc_port}", tmp_path / "transformer.log",
            env={"MAX_CONCURRENT_REQUESTS": "1", "MAX_QUEUED_REQUESTS": "0"}))
        client = SimilarityClient(url, concurrency=4, chunk_size=2, retry=RetryPolicy(
            max_retries=200, base_delay_s=0.2, max_delay_s=2.0))
        results = []
        restart_s = 0.0
        for result in client.score(pairs):
            results.append(result)
            if len(results) == 3:  # mid-run: stop the predictor, start a new one
                started = time.monotonic()
                first.send_signal(signal.SIGTERM)
                first.wait(30)
                second = stack.enter_context(running(cmd, env=env,
                                                     log_path=tmp_path / "pred2.log"))
                wait_http_ok(ready, timeout_s=180, proc=second, log_path=tmp_path / "pred2.log")
                restart_s = time.monotonic() - started
    counts = Counter(r.pair_id for r in results)
    assert counts == Counter(range(10)), counts
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    print(f"\nretries: {dict(client.stats.retries)}; predictor down for {restart_s:.1f} s; "
          f"requests in flight lowered to {client.stats.lowest_concurrency}")
    assert client.stats.retries["HTTP 429"] > 0
    assert client.stats.retries["HTTP 503"] > 0  # the predictor was away


def _cli(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as f:
        return subprocess.Popen([sys.executable, "-m", "similarity_client", *args],
                                stdout=f, stderr=subprocess.STDOUT, cwd=REPO_ROOT)


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _stop_after(proc: subprocess.Popen[bytes], out: Path, lines: int, sig: int) -> int:
    deadline = time.monotonic() + 120
    while _lines(out) < lines:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    return proc.wait(60)


def test_cli_killed_and_interrupted_then_resumed_scores_each_pair_once(
        service_url: str, tmp_path: Path) -> None:
    images = image_files(tmp_path, 10, seed=3)
    pairs_file = tmp_path / "pairs.csv"
    with pairs_file.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reference", "generated", "pair_id"])
        for k in range(400):
            w.writerow([images[k % 10].name, images[(k * 7 + 1) % 10].name, f"k{k}"])
    out = tmp_path / "scores.jsonl"
    slow = ["score", str(pairs_file), "--url", service_url, "--out", str(out),
            "--chunk-size", "2", "--concurrency", "1", "--no-progress"]
    assert _stop_after(_cli(slow, tmp_path / "run1.log"), out, 10, signal.SIGKILL) == -9
    after_kill = _lines(out)
    rc = _stop_after(_cli(slow, tmp_path / "run2.log"), out, after_kill + 20, signal.SIGINT)
    log2 = (tmp_path / "run2.log").read_text()
    assert rc == 130, log2
    assert "interrupted" in log2 and f"{after_kill} already in" in log2
    for line in out.read_text().splitlines():  # valid after SIGINT: whole lines only
        json.loads(line)
    done = _lines(out)
    fast = [*slow[:6], "--chunk-size", "64", "--concurrency", "2", "--no-progress"]
    finished = subprocess.run([sys.executable, "-m", "similarity_client", *fast],
                              capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert f"{done} already in" in finished.stderr
    # The real /health answered 200 and the chunks adapted (at most --chunk-size 64).
    assert "chunk size at the end" in finished.stdout, finished.stdout
    records = read_records(out)
    counts = Counter(r["pair_id"] for r in records)
    assert counts == Counter(f"k{k}" for k in range(400)), counts.most_common(3)
    assert all("distance" in r for r in records)
    print(f"\nkilled after {after_kill} lines, interrupted at {done}, resumed to 400")


def test_2000_pairs_throughput_against_one_pair_per_request(service_url: str) -> None:
    figures = measure(service_url, pairs=2000, distinct=16, naive_pairs=200)
    print(f"\n2,000 pairs (16 distinct 64x64 images, embedding cache warm), shared 2-core "
          f"machine:\n{figures.table()}")
    assert figures.requests >= 2000 // 32


# --- the report in a real browser ---------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.querySelectorAll('img.thumb')];
  const hist = document.getElementById('histogram');
  const r = {images: imgs.length,
             loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
             bars: document.querySelectorAll('#histogram rect.bar').length,
             histogram_width: hist ? hist.getBoundingClientRect().width : 0,
             cards: document.querySelectorAll('.card').length};
  const pre = document.createElement('pre');
  pre.id = 'check';
  pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
});
</script></body>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (make test installs it with apt-get when run "
                    "as root; or: apt-get install chromium)")
    return found


def render(browser: str, page: Path, tmp_path: Path, *args: str
           ) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args,
                           page.as_uri()], capture_output=True, text=True, timeout=120)


def test_report_renders_in_a_real_browser(service_url: str, photos: list[Photo],
                                          tmp_path: Path) -> None:
    browser = chromium()
    data = tmp_path / "data"
    data.mkdir()
    for photo in photos:
        (data / f"{photo.name}.jpg").write_bytes(encode(photo.image.convert("RGB"), "JPEG",
                                                        quality=90))
    rows = [(f"{p.name.split('-')[0]}.jpg", f"{p.name}.jpg", p.name)
            for p in photos if "-" in p.name]
    rows += [("astronaut.jpg", "coffee.jpg", "astronaut-vs-coffee"),
             ("chelsea.jpg", "rocket.jpg", "chelsea-vs-rocket"),
             ("camera.jpg", "missing.jpg", "missing-file")]
    with (data / "pairs.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("reference", "generated", "pair_id"), *rows])
    report = tmp_path / "report.html"
    assert main(["score", str(data / "pairs.csv"), "--url", service_url, "--out",
                 str(tmp_path / "scores.jsonl"), "--report", str(report), "--report-top", "8",
                 "--no-progress"]) == 0

    checked = tmp_path / "checked.html"
    checked.write_text(report.read_text().replace("</body>", CHECK_SCRIPT))
    dom = render(browser, checked, tmp_path, "--virtual-time-budget=5000", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    start = dom.stdout.index('<pre id="check">') + len('<pre id="check">')
    check = json.loads(dom.stdout[start:dom.stdout.index("</pre>", start)])
    assert check == {"images": 16, "loaded": 16, "bars": 30, "histogram_width": 760,
                     "cards": 8}, check

    shot = tmp_path / "report.png"
    result = render(browser, report, tmp_path, "--window-size=1280,1500",
                    f"--screenshot={shot}")
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.size == (1280, 1500)
        colors = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 1000  # photographs, not a blank page
    ARTIFACTS.mkdir(exist_ok=True)
    kept = ARTIFACTS / "client-report.png"
    shutil.copyfile(shot, kept)
    if os.environ.get("CLIENT_REPORT_DOCS_PICTURE"):  # refresh the README's picture
        with Image.open(shot) as img:
            img.convert("RGB").save(REPO_ROOT / "docs" / "client-report.jpg", quality=85)
    print(f"\nreport screenshot: {kept} (browser check: {check})")
