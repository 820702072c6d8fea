"""The benchmarks (``make bench``, ``bench/``): helpers, a smoke test of every script, and
a tiny run of each end to end.

The tiny runs start real servers (minutes in all): they are marked ``bench`` and run with
``make bench-test`` (``pytest -m bench``), not in a plain ``pytest`` / ``make test``. What
``make test`` keeps is fast: the helpers, and every script's ``main`` parsing its command
line in-process (``--help``), which catches an import error or a broken option.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bench.concurrency import percentile
from bench.upstream import upstream_time
from testing.photos import describe, make_images
from testing.procs import REPO_ROOT


def test_images_are_distinct_photographs_within_the_size_range() -> None:
    images = make_images(12, min_side=64, max_side=96, seed=3)
    assert len({hashlib.sha256(im.data).digest() for im in images}) == 12
    assert {im.fmt for im in images} == {"JPEG", "PNG"}
    for im in images:
        with Image.open(io.BytesIO(im.data)) as img:
            assert img.format == im.fmt and img.size == (im.width, im.height)
            assert 64 <= min(img.size) and max(img.size) <= 96
    info = describe(images)
    sources = info["sources"]
    assert isinstance(sources, list | dict) and len(sources) >= 4
    assert info["count"] == info["distinct_bytes"] == 12
    assert make_images(3, min_side=64, max_side=96, seed=3) == images[:3]  # reproducible


def test_upstream_time_is_pairs_times_the_mean_time_per_pair() -> None:
    up = {"pairs": 2, "per_pair_s": [1.0, 3.0], "mean_per_pair_s": 2.0}
    assert upstream_time(up, 1) == (2.0, False)
    assert upstream_time(up, 2) == (4.0, False)
    assert upstream_time(up, 10) == (20.0, True)
    assert upstream_time(None, 10) == (None, False)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([1.0, 2.0], 95) == pytest.approx(1.95)


@pytest.mark.slow
@pytest.mark.bench
def test_tiny_benchmark_run_end_to_end(dino_weights_dir: Path, tmp_path: Path) -> None:
    """Every phase at the smallest size: weights, images, decode, predictor, upstream,
    service over HTTP (batches, extras, concurrent clients, gRPC), report files."""
    weights = tmp_path / "bench-weights"
    weights.mkdir()
    (weights / "dino_vitb16").symlink_to(dino_weights_dir)  # the random test checkpoint
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BENCH_") and k not in ("PRECISION", "BATCH_SIZE_LIMIT")}
    env.update({"DEVICE": "cpu", "MODEL_TYPE": "dino_vitb16",
                "MODEL_CACHE_DIR": str(tmp_path / "no-weights"),
                "BENCH_WEIGHTS_DIR": str(weights), "PYTHONUNBUFFERED": "1"})
    cmd = [sys.executable, "-m", "bench.run", "--batches", "1,2", "--repeats", "1",
           "--clients", "2", "--rounds", "1", "--client-pairs", "1", "--upstream-pairs", "1",
           "--decode-images", "4", "--predictor-images", "2", "--min-side", "400",
           "--max-side", "440", "--time-limit", "170", "--json", str(out_json),
           "--markdown", str(out_md), "--log-dir", str(tmp_path / "logs")]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "random weights: same cost as the real ones, distances meaningless" in out
    assert "speedup" in out and "upstream fp32 (always)" in out

    res = json.loads(out_json.read_text())
    assert res["complete"] is True
    assert res["settings"]["weights"] == "random"
    assert [r["pairs"] for r in res["batches"]] == [1, 2]
    assert all(r["speedup"] > 0 and r["upstream_s"] > 0 for r in res["batches"])
    assert res["batches"][1]["upstream_scaled"] is True  # 2 pairs from 1 measured
    assert res["concurrent"]["pairs"] == 2 and res["concurrent"]["pairs_per_s"] > 0
    assert res["decode"]["all"]["pool_images_per_s"] > 0
    assert res["predictor"]["batch_images_per_s"] > 0 and res["grpc"]["images_per_s"] > 0
    assert res["images"]["count"] == res["images"]["distinct_bytes"]
    pl = res["pipelining"]  # the same requests with and without overlapped decoding
    assert pl["pairs"] == 2 and len(pl["pipelined_s"]) == len(pl["single_call_s"]) == 1
    assert "decoding overlapped with inference" in out
    assert res["fidelity"]["max_abs_diff"] < 1e-4  # fp32 service vs fp32 upstream
    assert "| pairs |" in out_md.read_text()
    # The servers were stopped on exit.
    assert len(res["service"]["pids"]) == 2
    for pid in res["service"]["pids"]:
        assert not Path(f"/proc/{pid}").exists(), f"server {pid} still running"


def _run_bench(module: str, args: list[str], weights_dir: Path | None, tmp_path: Path,
               **env_extra: str) -> str:
    """``python -m <module> <args>`` on CPU fp32 with the random test checkpoint as its
    weights; its stdout, after checking that it exited 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    env.update({"DEVICE": "cpu", "PRECISION": "fp32", "MODEL_TYPE": "dino_vitb16",
                "MODEL_CACHE_DIR": str(tmp_path / "no-weights"), **env_extra})
    if weights_dir is not None:
        weights = tmp_path / "bench-weights"
        weights.mkdir()
        (weights / "dino_vitb16").symlink_to(weights_dir)
        env["BENCH_WEIGHTS_DIR"] = str(weights)
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.bench
def test_compile_benchmark_compares_with_eager(dino_weights_dir: Path, tmp_path: Path) -> None:
    """bench.studies.compile at batch 1: eager and torch.compile, with their deviation."""
    if shutil.which("g++") is None and shutil.which("cc") is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    out = _run_bench("bench.studies.compile", ["--batches", "1", "--repeats", "1"],
                     dino_weights_dir, tmp_path, TORCHINDUCTOR_CACHE_DIR=str(tmp_path))
    lines = {m.group(1): float(m.group(2)) for m in re.finditer(
        r"^\s+(eager|compile|cudagraphs) batch\s+1: .* max \|diff\| vs eager (\S+)$",
        out, re.MULTILINE)}
    assert set(lines) == {"eager", "compile"}  # no CUDA graphs without CUDA
    assert lines["eager"] == 0 and lines["compile"] < 1e-4


@pytest.mark.slow
@pytest.mark.bench
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_pipelining_benchmark_runs_both_layouts(dino_weights_dir: Path, tmp_path: Path) -> None:
    """bench.studies.pipelining at one pair: predictor and transformers on separate and on shared
    cores, each transformer answering every request."""
    out = _run_bench("bench.studies.pipelining",
                     ["--pairs", "1", "--requests", "1", "--chunk", "1"], dino_weights_dir,
                     tmp_path)
    for layout in ("separate", "shared"):
        assert re.search(rf"^{layout} cores, 1 pairs: chunks of 1 [0-9.]+ s, one call [0-9.]+ s",
                         out, re.MULTILINE), out


@pytest.mark.slow
@pytest.mark.bench
def test_batching_benchmark_compares_with_and_without(dino_weights_dir: Path,
                                                      tmp_path: Path) -> None:
    """bench.studies.batching at 2 clients x 1 request: both settings run and report pairs/s and
    the mean forward-pass size (1 image a pass is impossible: a pair is 2 images)."""
    out = _run_bench("bench.studies.batching", ["--clients", "2", "--rounds", "1", "--pairs", "1"],
                     dino_weights_dir, tmp_path)
    found = re.findall(r"^BATCH_ACROSS_REQUESTS=(true|false): .* ([0-9.]+) pairs/s, .*; "
                       r"([0-9.]+) images per forward pass", out, re.MULTILINE)
    assert [f[0] for f in found] == ["true", "false"], out
    assert float(found[1][2]) == 2.0  # without batching, every pass is one 1-pair request
    assert float(found[0][2]) >= 2.0


@pytest.mark.slow
@pytest.mark.bench
def test_transformer_alone_benchmark_compares_pillow_and_native(tmp_path: Path) -> None:
    """bench.transformer_alone at 2 pairs: the real transformer before an instant stand-in
    predictor, DECODE_IMPL=pillow against native: CPU per image by format and size, CPU
    per pair, and the check that both sent byte-identical tensors."""
    out = _run_bench("bench.transformer_alone", ["--pairs", "2", "--requests", "1",
                                                 "--clients", "2", "--rounds", "1",
                                                 "--decode-images", "4",
                                                 "--decode-repeats", "1"],
                     None, tmp_path)
    assert "tensors identical: True" in out, out
    assert re.search(r"^\| all \| 500-1100 px \| 4 \| [0-9.]+ \| [0-9.]+ \| [0-9.]+x \|$", out,
                     re.MULTILINE), out
    impls = re.findall(r"^DECODE_IMPL=(pillow|native): one request of 2 pairs [0-9]+ ms .* "
                       r"([0-9.]+) pairs/s per core; .* ([0-9.]+) pairs/s on", out, re.MULTILINE)
    assert [i[0] for i in impls] == ["pillow", "native"], out
    assert all(float(i[1]) > 0 and float(i[2]) > 0 for i in impls), out
    assert re.search(r"^tensors sent to the stand-in: 16 \(pillow\), 16 \(native\); "
                     r"byte-identical: yes$", out, re.MULTILINE), out
    assert "FAKE" in out  # the stand-in says what it is


@pytest.mark.slow
@pytest.mark.bench
def test_spreading_benchmark_reports_the_split(tmp_path: Path) -> None:
    """bench.studies.spreading, one and three connections over three FAKE predictors: the
    split per predictor, all on one with one connection, a third each with three."""
    out = _run_bench("bench.studies.spreading",
                     ["--connections", "1,3", "--policies", "round-robin", "--clients", "3",
                      "--requests", "3"], None, tmp_path)
    splits = {int(m.group(1)): [int(n) for n in m.group(2).split(",")] for m in re.finditer(
        r"^policy=round-robin PREDICTOR_CONNECTIONS=(\d+): calls per predictor \[([0-9, ]+)\]",
        out, re.MULTILINE)}
    assert sorted(splits[1]) == [0, 0, 9], out
    assert sum(splits[3]) == 9 and min(splits[3]) >= 2, out


# Every benchmark script with a command line (``python -m bench.<name>``, the studies as
# ``bench.studies.<name>``).
SCRIPTS = sorted(".".join(p.relative_to(REPO_ROOT / "bench").with_suffix("").parts)
                 for p in (REPO_ROOT / "bench").rglob("*.py") if "\ndef main(" in p.read_text())


def test_smoke_every_benchmark_script_starts(capsys: pytest.CaptureFixture[str]) -> None:
    """Each script imports and its options parse (``--help`` exits 0 with a usage line)."""
    import importlib

    assert {"run", "transformer_alone", "worst_case", "studies.compile", "studies.pipelining",
            "studies.batching", "studies.spreading", "studies.fairness"} <= set(SCRIPTS)
    for name in SCRIPTS:
        module = importlib.import_module(f"bench.{name}")
        with pytest.raises(SystemExit) as done:
            module.main(["--help"])
        assert done.value.code == 0, name
        assert "usage:" in capsys.readouterr().out, name


def test_bench_variants_covers_every_variant() -> None:
    from bench.variants import DEFAULT_ORDER
    from predictor.layout import VARIANTS

    assert sorted(DEFAULT_ORDER) == sorted(VARIANTS)


@pytest.mark.slow
@pytest.mark.bench
def test_worst_case_connection_floods_report_their_answers(tmp_path: Path) -> None:
    """bench.worst_case --only connections at small sizes and short deadlines: the drippers
    are all closed with 408 after the head deadline, the huge heads get 431, and the valid
    request beside the slow uploads is served."""
    out = _run_bench("bench.worst_case", ["--only", "connections", "--drip-connections", "30",
                                          "--slow-uploads", "12", "--out",
                                          str(tmp_path / "wc.json")], None, tmp_path,
                     HEADER_TIMEOUT="2", BODY_READ_TIMEOUT="2")
    assert re.search(r"header drip, 30 connections: open after 7 s: 0, 9 s: 0; answers "
                     r"\{'408': 30\}", out), out
    assert re.search(r"1,000,000 headers .*: 431 in", out), out
    assert re.search(r"4 header values of 16.8 MB .*: 431 in", out), out
    assert re.search(r"12 slow uploads .* uploads got \{'408': 12\}; a valid request every "
                     r"1 s: \{'200': \d+\}", out), out
    assert "FAKE" in out
