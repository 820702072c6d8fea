"""``similarity_client.ray`` on a local Ray cluster (2 CPUs, a small object store) against
the session's real service: 2,000 pairs from a Parquet file score exactly as the CLI
scores them, a worker killed mid-run loses no pair and writes none twice, a second run
resumes, images embed as ``/embed`` embeds them; and the plain client never needs ray.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from testing.images import image_files
from testing.procs import REPO_ROOT

N_PAIRS = 2000
N_IMAGES = 40  # small and few: after the first of each, the service's cache answers


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    import ray

    # Workers import the task functions (this module's too) by name: give them the
    # checkout's paths, whatever way pytest found them.
    paths = [str(REPO_ROOT), str(REPO_ROOT / "client"), os.environ.get("PYTHONPATH", "")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
        ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """2,000 pairs (one with a truncated image) as the CLI's CSV and as Parquet."""
    folder = tmp_path_factory.mktemp("ray-pairs")
    images = image_files(folder, N_IMAGES, size=32, seed=7)
    broken = folder / "broken.png"
    broken.write_bytes(images[0].read_bytes()[:50])
    rows = []
    for i in range(N_PAIRS):
        a = i % N_IMAGES
        b = (a + 1 + i // N_IMAGES) % N_IMAGES
        rows.append({"pair_id": f"p{i:04d}", "reference": str(images[a]),
                     "generated": str(broken if i == 1234 else images[b])})
    with (folder / "pairs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["pair_id", "reference", "generated"])
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), folder / "pairs.parquet", row_group_size=500)
    return {"csv": folder / "pairs.csv", "parquet": folder / "pairs.parquet"}


@pytest.fixture(scope="module")
def cli_results(service_url: str, pairs: dict[str, Path],
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    from similarity_client.cli import main

    # Every image embedded once first, so that every later request is answered from the
    # same cached vectors. (Otherwise an image in two concurrent requests is embedded
    # twice, in two batches, and the predictor's float32 results may differ in the last
    # bits with the batch: distances then agree within 1e-7 rather than exactly.)
    images = sorted({p for row in csv.DictReader(pairs["csv"].open()) for p in
                     (row["reference"], row["generated"]) if "broken" not in p})
    r = httpx.post(f"{service_url}/embed", timeout=300, json={"images": [
        {"image": base64.b64encode(Path(p).read_bytes()).decode()} for p in images]})
    assert r.status_code == 200, r.text
    out = tmp_path_factory.mktemp("ray-cli") / "scores.jsonl"
    started = time.perf_counter()
    assert main(["score", str(pairs["csv"]), "--url", service_url, "--out", str(out),
                 "--no-progress"]) == 0
    print(f"\ncli: {N_PAIRS} pairs in {time.perf_counter() - started:.1f} s")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == N_PAIRS
    return {r["pair_id"]: r for r in records}


def raw_rows(out: Path) -> list[dict[str, Any]]:
    """Every row of every file in ``out``, repeats included (no deduplication)."""
    return [row for f in sorted(out.glob("*.parquet")) for row in pq.read_table(f).to_pylist()]


def assert_equal_to_cli(rows: list[dict[str, Any]], cli: dict[str, dict[str, Any]]) -> None:
    counts = Counter(r["pair_id"] for r in rows)
    assert len(counts) == N_PAIRS and set(counts) == set(cli), "pairs lost"
    assert max(counts.values()) == 1, f"written twice: {[k for k, n in counts.items() if n > 1]}"
    for row in rows:
        expected = cli[row["pair_id"]]
        assert row["distance"] == expected.get("distance"), row  # exactly
        assert row["similarity"] == expected.get("similarity"), row
        assert (row["error"] is None) == ("error" not in expected), row
    assert sum(1 for r in rows if r["error"]) == 1


@pytest.mark.slow
def test_2000_pairs_equal_the_clis_and_a_second_run_resumes(
        ray_cluster: Any, service_url: str, pairs: dict[str, Path],
        cli_results: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    from similarity_client import ray as sc_ray

    ds = ray_cluster.data.read_parquet(str(pairs["parquet"]), override_num_blocks=4)
    out = tmp_path / "scores"
    started = time.perf_counter()
    report = sc_ray.score_pairs(ds, service_url, out, batch_size=250, workers=2,
                                concurrency=2, num_cpus=0.5)
    print(f"\nray: {N_PAIRS} pairs in {time.perf_counter() - started:.1f} s ({report})")
    assert (report.total, report.already_done, report.written, report.errors,
            report.not_scored) == (N_PAIRS, 0, N_PAIRS, 1, 0), report
    assert_equal_to_cli(raw_rows(out), cli_results)
    bad = [r for r in raw_rows(out) if r["error"]]
    assert bad[0]["pair_id"] == "p1234" and bad[0]["field"] == "generated_image"

    again = sc_ray.score_pairs(ds, service_url, out, batch_size=250, workers=2)
    assert (again.already_done, again.written, again.not_scored) == (N_PAIRS, 0, 0)
    assert len(raw_rows(out)) == N_PAIRS
    assert sc_ray.read_results(out).num_rows == N_PAIRS


def kill_once(batch: pa.Table, *, marker: str) -> pa.Table:
    """Kill this worker process, once in the whole run, on the batch holding p0750: after
    its pairs were scored, before they are written. Ray runs the task again."""
    if "p0750" in batch.column("pair_id").to_pylist():
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return batch
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(1)
    return batch


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_nothing_and_writes_nothing_twice(
        ray_cluster: Any, service_url: str, pairs: dict[str, Path],
        cli_results: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    from similarity_client import ray as sc_ray

    marker = tmp_path / "killed"
    ds = ray_cluster.data.read_parquet(str(pairs["parquet"]), override_num_blocks=4)
    scored = sc_ray.score_dataset(ds, service_url, batch_size=250, workers=2, concurrency=2,
                                  num_cpus=0.5)
    killed = scored.map_batches(kill_once, batch_format="pyarrow", num_cpus=0.5,  # type: ignore[arg-type]
                                fn_kwargs={"marker": str(marker)})
    out = tmp_path / "scores"
    sc_ray.write_results(killed, out)
    assert marker.exists(), "no worker was killed"
    assert int(marker.read_text()) != os.getpid()  # a worker, not this process
    assert_equal_to_cli(raw_rows(out), cli_results)


@pytest.mark.slow
def test_images_embed_as_embed_does(ray_cluster: Any, service_url: str,
                                    tmp_path: Path) -> None:
    from similarity_client import ray as sc_ray

    images = image_files(tmp_path, 6, size=32, seed=8)
    rows = [{"id": i, "image": str(p)} for i, p in enumerate(images)]
    rows.append({"id": 99, "image": str(tmp_path / "missing.png")})
    ds = ray_cluster.data.from_items(rows)
    out = tmp_path / "embeddings"
    report = sc_ray.embed_images(ds, service_url, out, chunk_size=4, batch_size=4)
    assert (report.written, report.errors, report.not_scored) == (7, 1, 0), report
    got = {r["id"]: r for r in sc_ray.read_results(out, "id").to_pylist()}
    assert got[99]["error"] == "file not found" and got[99]["embedding"] is None
    r = httpx.post(f"{service_url}/embed", timeout=120, json={"images": [
        {"image": base64.b64encode(p.read_bytes()).decode()} for p in images]})
    assert r.status_code == 200, r.text
    for i, expected in enumerate(r.json()["embeddings"]):
        assert got[i]["embedding"] == pytest.approx(expected["embedding"], abs=0), i
        assert got[i]["model_type"] == "dino_vitb16" and got[i]["error"] is None


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from similarity_client import ray as sc_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(sc_ray.MissingExtra, match=r"pip install 'similarity-client\[ray\]'"):
        sc_ray.score_pairs(None, "http://x", "out")  # type: ignore[arg-type]


def test_the_plain_client_needs_neither_ray_nor_pyarrow() -> None:
    import tomllib

    project = tomllib.loads((REPO_ROOT / "client" / "pyproject.toml").read_text())["project"]
    assert sorted(d.split(">")[0] for d in project["dependencies"]) == ["httpx", "tqdm"]
    assert "ray[data]" in " ".join(project["optional-dependencies"]["ray"])
    code = ("import sys, similarity_client, similarity_client.cli; "
            "print(sorted({'ray', 'pyarrow'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == "[]"
