"""``make gpu-check``: its plan and time caps, the goal logic, and CPU mode end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import gpu_check
from bench.gpu_check import STEPS, Check, Step, goals, plan_ok, run, vit_macs
from testing.procs import REPO_ROOT


def test_dry_run_lists_every_step_within_eight_minutes() -> None:
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines() if " cap " in line]
    assert names == ["env", "checkpoint", "gpu_tests", "model", "copies", "service",
                     "fidelity", "summary"]
    ok, total = plan_ok(STEPS)
    assert ok and total + gpu_check.SETUP_RESERVE_S <= 480
    assert f"total {total:.0f} s of caps" in proc.stdout


def test_a_plan_over_eight_minutes_is_refused() -> None:
    too_long = [*STEPS, Step("extra", 200, lambda c: {}, "more")]
    assert not plan_ok(too_long)[0]


def test_a_step_over_its_cap_is_cut_and_the_next_still_runs(tmp_path: Path) -> None:
    def slow(c: Check) -> dict[str, object]:
        time.sleep(10)
        return {}

    def broken(c: Check) -> dict[str, object]:
        raise RuntimeError("no GPU here")

    steps = [Step("slow", 1, slow, "sleeps"), Step("broken", 5, broken, "fails"),
             Step("quick", 5, lambda c: {"x": 1}, "works"), Step("summary", 5, lambda c: {}, "")]
    check = Check(out=tmp_path, device="cpu", tiny=True, cache_dir=None)
    started = time.monotonic()
    summary = run(check, steps)
    assert time.monotonic() - started < 8
    assert check.status["slow"].startswith("timed out")
    assert check.status["broken"].startswith("failed: RuntimeError: no GPU here")
    assert check.status["quick"].startswith("ok") and check.figures["quick"] == {"x": 1}
    assert "| slow | timed out" in summary.read_text()
    assert json.loads((tmp_path / "figures.json").read_text())["quick"] == {"x": 1}


def test_flops_per_image_match_the_known_vit_b16_count() -> None:
    """17.6 GMACs for a full ViT-B/16 at 224 px (NOTES §2); the model computes only the CLS
    token in its last block (queries, proj and MLP for one token instead of 197)."""
    d, n, mlp = 768, 197, 3072
    full_block = n * (4 * d * d + 2 * d * mlp) + 2 * n * n * d
    full = 196 * d * d + 12 * full_block
    assert 17.5e9 < full < 17.6e9
    saved = (n - 1) * (2 * d * d + 2 * d * mlp) + 2 * (n * n - n) * d
    assert vit_macs() == full - saved


def test_goals_name_the_stage_that_holds_each_back() -> None:
    figures = {
        "env": {"cpus": 16},
        "model": {"rows": [
            {"precision": "bf16", "mode": "graphs", "batch": 64, "images_per_s": 12000.0,
             "pct_peak": 38.0},
            {"precision": "fp16", "mode": "graphs", "batch": 64, "images_per_s": 12500.0,
             "pct_peak": 40.0}]},
        "copies": {"staged_graphs_two_threads_images_per_s": 11000.0},
        "service": {"health": {"precision": "fp16"}, "latency_30_pairs_p50_s": 0.080,
                    "grpc_60_images_s": 0.015, "images_per_s": 3000.0,
                    "predictor_cpu_s_per_image": 0.0004,
                    "transformer_cpu_s_per_image": 0.0025},
    }
    latency, rate, peak = goals(figures)
    assert not latency["met"] and latency["held_back_by"] == "transformer CPU"
    assert latency["stages_s"]["model"] == pytest.approx(60 / 12500)
    assert not rate["met"] and rate["held_back_by"] == "transformer CPU"  # 400 images/s
    assert not peak["met"] and peak["held_back_by"] == "model" and peak["figure"] == 38.0
    service = figures["service"]
    assert isinstance(service, dict)
    service.update(latency_30_pairs_p50_s=0.030, images_per_s=10500.0)
    assert [g["met"] for g in goals(figures)] == [True, True, False]


@pytest.mark.slow
def test_cpu_mode_runs_end_to_end(tmp_path: Path, dino_weights_dir: Path) -> None:
    """Every step at the smallest sizes on this GPU-less machine: the model, copies,
    service (real predictor and transformer processes) and fidelity steps measure on the
    CPU; the GPU-only parts say n/a; summary and figures are written."""
    out = tmp_path / "gpu-check"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--tiny",
         "--caps-scale", "10", "--out", str(out), "--cache-dir", str(dino_weights_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=4000)
    figures = json.loads((out / "figures.json").read_text())
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:], figures["status"])
    assert all(v.startswith("ok") for v in figures["status"].values()), figures["status"]
    assert figures["env"]["device"] == "cpu"
    assert {r["batch"] for r in figures["model"]["rows"]} == {1, 2}
    assert all(r["images_per_s"] > 0 and r["pct_peak"] is None for r in figures["model"]["rows"])
    svc = figures["service"]
    assert svc["health"]["device"] == "cpu" and svc["health"]["attention_backend"]
    assert svc["latency_30_pairs_p50_s"] > 0 and svc["clients"]["pairs"] == 2 * 1 * 2
    assert figures["fidelity"]["fp32_vs_upstream_max"] < 1e-5
    assert [g["met"] for g in figures["goals"]] == [False, False, False]  # a CPU, tiny
    summary = (out / "summary.md").read_text()
    assert "## Goals" in summary and "held back by" in summary
