"""``nearest`` and ``compare`` against the real service (the session's predictor and
transformer processes, ``tests/conftest.py``): distances equal to ``/similarity``, nothing
embedded twice (counted with the service's own ``/metrics``), kill and resume, the metrics
equal to those of ``/embed``'s vectors, and both reports in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from similarity_client import Pair, SimilarityClient
from similarity_client import metrics as M
from similarity_client.cli import main
from similarity_client.store import EmbeddingStore

from testing.images import image_files
from testing.procs import REPO_ROOT
from tests.client.test_client_service import ARTIFACTS, CHECK_SCRIPT, chromium, render
from tests.conftest import Photo, encode

pytestmark = pytest.mark.slow


def embed_counts(url: str) -> tuple[float, float]:
    """(``/embed`` requests answered 200, images in ``/embed`` requests) so far."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    requests = re.search(r'^embed_requests_total\{code="200"\} ([0-9.e+]+)$', text, re.M)
    images = re.search(r"^embed_images_per_request_sum ([0-9.e+]+)$", text, re.M)
    return (float(requests.group(1)) if requests else 0.0,
            float(images.group(1)) if images else 0.0)


def quiet_counts(url: str, still_s: float = 12.0) -> tuple[float, float]:
    """``embed_counts`` once they stop moving: a request of a stopped run that was in flight
    is answered (and counted) later. The service finishes it even though nobody reads the
    answer, and a chunk takes the CPU model several seconds on a loaded machine: 3 s of
    stillness once counted a stopped run's last chunk in the next run's window."""
    last = embed_counts(url)
    while True:
        time.sleep(still_s)
        now = embed_counts(url)
        if now == last:
            return now
        last = now


def sent_since(url: str, before: tuple[float, float]) -> tuple[int, int]:
    now = embed_counts(url)
    return int(now[0] - before[0]), int(now[1] - before[1])


def records(path: Path) -> dict[str, dict]:
    return {json.loads(line)["id"]: json.loads(line) for line in path.read_text().splitlines()}


def test_nearest_equals_similarity_and_embeds_nothing_twice(service_url: str,
                                                           tmp_path: Path) -> None:
    for side in ("ref", "gen"):
        (tmp_path / side).mkdir()
    refs = image_files(tmp_path / "ref", 10, seed=21)
    gens = image_files(tmp_path / "gen", 5, seed=22)
    copy = tmp_path / "gen" / "copy.png"
    shutil.copyfile(refs[3], copy)  # a memorised image: same bytes as a reference
    out, store = tmp_path / "nearest.jsonl", tmp_path / "store"
    argv = ["nearest", str(tmp_path / "gen"), str(tmp_path / "ref"), "--k", "3", "--out",
            str(out), "--url", service_url, "--store", str(store), "--threshold", "1e-4",
            "--chunk-size", "2", "--no-progress"]
    before = embed_counts(service_url)
    assert main(argv) == 0
    requests, images = sent_since(service_url, before)
    assert images == 15, images  # 10 references + 5 generated; the copy is not sent again
    assert requests >= 4  # chunks of 2 * chunk-size = 4 images

    # Every generated image against every reference through /similarity: the oracle.
    sources = [*gens, copy]
    pairs = [Pair(r, g, f"{g.name}|{r.name}") for g in sources for r in refs]
    truth = {r.pair_id: r.distance for r in SimilarityClient(service_url).score(pairs)}
    got = records(out)
    assert set(got) == {p.name for p in sources}
    worst = 0.0
    for g in sources:
        ranked = sorted(refs, key=lambda r: (truth[f"{g.name}|{r.name}"], r.name))[:3]
        rec = got[g.name]
        assert [n["id"] for n in rec["nearest"]] == [r.name for r in ranked]
        for n in rec["nearest"]:
            worst = max(worst, abs(n["distance"] - truth[f"{g.name}|{n['id']}"]))
    assert worst < 1e-6, worst
    assert got["copy.png"]["nearest"][0]["id"] == refs[3].name
    assert got["copy.png"]["under_threshold_count"] == 1
    assert got["copy.png"]["under_threshold"][0]["id"] == refs[3].name
    assert sum(r["under_threshold_count"] for r in got.values()) == 1
    print(f"\nnearest vs /similarity: max |diff| = {worst:.1e}")

    before = embed_counts(service_url)
    assert main(argv) == 0  # a second run: everything from the store
    assert sent_since(service_url, before) == (0, 0)
    assert records(out) == got

    image_files(tmp_path / "ref", 1, seed=23)  # one new reference
    before = embed_counts(service_url)
    assert main(argv) == 0
    assert sent_since(service_url, before) == (1, 1)
    assert len(records(out)) == 6


def _cli(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as f:
        return subprocess.Popen([sys.executable, "-m", "similarity_client", *argv],
                                stdout=f, stderr=subprocess.STDOUT, cwd=REPO_ROOT)


def _stop_when(proc: subprocess.Popen[bytes], done: object, sig: int, log: Path) -> int:
    deadline = time.monotonic() + 300
    while not done():  # type: ignore[operator]
        assert proc.poll() is None, f"ended before it could be stopped: {log.read_text()}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)
    proc.send_signal(sig)
    return proc.wait(60)


def test_nearest_killed_and_interrupted_then_resumed_embeds_each_image_once(
        service_url: str, tmp_path: Path) -> None:
    for side in ("ref", "gen"):
        (tmp_path / side).mkdir()
    image_files(tmp_path / "ref", 30, seed=31)
    image_files(tmp_path / "gen", 10, seed=32)
    out, store = tmp_path / "nearest.jsonl", tmp_path / "store"
    argv = ["nearest", str(tmp_path / "gen"), str(tmp_path / "ref"), "--out", str(out),
            "--url", service_url, "--store", str(store), "--chunk-size", "1",
            "--concurrency", "1", "--no-progress"]
    start = embed_counts(service_url)

    def stored() -> int:
        return len(EmbeddingStore(store, "dino_vitb16")) if (store / "dino_vitb16").exists() \
            else 0

    run1 = _cli(argv, tmp_path / "run1.log")  # SIGKILL once a shard is on disk
    assert _stop_when(run1, lambda: stored() >= 2, signal.SIGKILL, tmp_path / "run1.log") == -9
    sent_before_2 = quiet_counts(service_url)
    after_kill = stored()
    run2 = _cli(argv, tmp_path / "run2.log")  # SIGINT: flushes what arrived
    rc = _stop_when(run2, lambda: sent_since(service_url, sent_before_2)[1] >= 6,
                    signal.SIGINT, tmp_path / "run2.log")
    assert rc == 130, (tmp_path / "run2.log").read_text()
    assert "interrupted" in (tmp_path / "run2.log").read_text()
    before = quiet_counts(service_url)
    after_int = stored()
    # what run 2 had answered is stored (the chunk in flight when it stopped may be not)
    assert after_int >= after_kill + int(before[1] - sent_before_2[1]) - 2
    finished = subprocess.run([sys.executable, "-m", "similarity_client", *argv],
                              capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert sent_since(service_url, before)[1] == 40 - after_int  # only what was missing
    assert stored() == 40
    assert len(records(out)) == 10
    total = sent_since(service_url, start)[1]
    print(f"\nkilled with {after_kill} stored, interrupted with {after_int}, resumed to 40; "
          f"{total} images sent in all")


def fetch_embeddings(url: str, paths: list[Path]) -> np.ndarray:
    import base64

    r = httpx.post(f"{url}/embed", timeout=600, json={"images": [
        {"image": base64.b64encode(p.read_bytes()).decode(), "id": p.name} for p in paths]})
    assert r.status_code == 200, r.text
    return np.array([e["embedding"] for e in r.json()["embeddings"]], np.float32)


def _browser_check(browser: str, page: Path, tmp_path: Path) -> tuple[dict, str]:
    checked = tmp_path / f"checked-{page.name}"
    checked.write_text(page.read_text().replace("</body>", CHECK_SCRIPT))
    dom = render(browser, checked, tmp_path, "--virtual-time-budget=5000", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    start = dom.stdout.index('<pre id="check">') + len('<pre id="check">')
    return json.loads(dom.stdout[start:dom.stdout.index("</pre>", start)]), dom.stdout


def test_compare_equals_the_metrics_of_embed_vectors_and_renders(
        service_url: str, tmp_path: Path) -> None:
    browser = chromium()
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
    a_paths = image_files(tmp_path / "a", 12, seed=41)
    b_paths = image_files(tmp_path / "b", 14, seed=42)
    out, report = tmp_path / "metrics.json", tmp_path / "compare.html"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out),
                 "--url", service_url, "--store", str(tmp_path / "store"), "--k", "3",
                 "--bootstrap", "20", "--report", str(report), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    a, b = fetch_embeddings(service_url, a_paths), fetch_embeddings(service_url, b_paths)
    expected = M.all_metrics(a, b, 3)
    for name, value in expected.items():
        assert result["metrics"][name]["value"] == pytest.approx(value, abs=1e-5), name
        assert result["metrics"][name]["ci_low"] <= result["metrics"][name]["ci_high"]
    assert (result["set_a"]["n"], result["set_b"]["n"], result["bootstrap"]["done"]) == (
        12, 14, 20)
    check, dom = _browser_check(browser, report, tmp_path)
    assert check["bars"] == 30 and check["histogram_width"] == 760, check
    assert dom.count('class="metric"') == 9
    assert dom.count('<svg id="histogram') == 2


def test_nearest_report_renders_in_a_real_browser(service_url: str, photos: list[Photo],
                                                  tmp_path: Path) -> None:
    browser = chromium()
    gen, ref = tmp_path / "generated", tmp_path / "references"
    gen.mkdir()
    ref.mkdir()
    for photo in photos:
        folder = gen if "-" in photo.name else ref
        (folder / f"{photo.name}.jpg").write_bytes(encode(photo.image.convert("RGB"), "JPEG",
                                                          quality=90))
    shutil.copyfile(ref / "rocket.jpg", gen / "rocket-copy.jpg")
    report = tmp_path / "nearest.html"
    assert main(["nearest", str(gen), str(ref), "--k", "3", "--out",
                 str(tmp_path / "nearest.jsonl"), "--url", service_url, "--store",
                 str(tmp_path / "store"), "--threshold", "0.05", "--report", str(report),
                 "--report-top", "6", "--no-progress"]) == 0
    check, dom = _browser_check(browser, report, tmp_path)
    assert check == {"images": 24, "loaded": 24, "bars": 30, "histogram_width": 760,
                     "cards": 6}, check
    assert "rocket-copy.jpg: nearest distance 0.0000 (under the threshold)" in dom

    shot = tmp_path / "nearest.png"
    result = render(browser, report, tmp_path, "--window-size=1280,1400",
                    f"--screenshot={shot}")
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    with Image.open(shot) as img:
        colors = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 1000  # photographs, not a blank page
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "nearest-report.png")
    if os.environ.get("CLIENT_REPORT_DOCS_PICTURE"):  # refresh the README's picture
        with Image.open(shot) as img:
            img.convert("RGB").resize((960, 1050)).save(REPO_ROOT / "docs" /
                                                        "nearest-report.jpg", quality=80)
    print(f"\nnearest report screenshot: {ARTIFACTS / 'nearest-report.png'} ({check})")


def test_embedding_rate_from_the_service_and_from_the_store(
        service_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The figures of ``python -m bench.nearest --url``: printed, not asserted."""
    from bench.nearest import embed_figures

    embed_figures(service_url, 24, 32, 4)
    out = capsys.readouterr().out
    with capsys.disabled():
        print(out)
    assert "references/s" in out
