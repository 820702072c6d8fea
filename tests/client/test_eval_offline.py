"""``nearest``/``compare`` parts that need no service: the metrics against their reference
packages (``prdc``, ``vendi-score``, scipy), the search engines against brute force, the
embedding store, resuming, and the message of a missing extra.

Where a command runs here, its embeddings are put in the store beforehand, under the real
keys of real image files (synthetic vectors: no service is asked, ``--model-type`` names
the store). The same commands against the real service: ``test_eval_service.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.linalg
from prdc import compute_prdc
from similarity_client import metrics as M
from similarity_client.cli import main
from similarity_client.imagesets import read_images
from similarity_client.search import Searcher
from similarity_client.store import EmbeddingStore, image_key
from vendi_score import vendi

from tests.client.test_client_unit import png


def unit(x: np.ndarray) -> np.ndarray:
    """Rows as /embed answers them: per-row mean subtracted, unit L2 norm, float32."""
    x = x - x.mean(1, keepdims=True)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def sets(n_a: int, n_b: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scale = np.linspace(0.3, 1.7, dim)
    b = unit(rng.normal(size=(n_b, dim)) * scale)
    a = unit(rng.normal(size=(n_a, dim)) * scale[::-1] + 0.2)
    return a, b


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The FID formula as pytorch-fid writes it, with scipy's matrix square root."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu = a.mean(0) - b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = np.real(scipy.linalg.sqrtm(ca @ cb))
    return float(mu @ mu + np.trace(ca) + np.trace(cb) - 2 * np.trace(root))


@pytest.mark.parametrize(("n_a", "n_b", "dim"), [(700, 500, 64), (600, 500, 256)])
def test_frechet_distance_equals_scipy_sqrtm(n_a: int, n_b: int, dim: int) -> None:
    a, b = sets(n_a, n_b, dim)
    theirs = scipy_frechet(a, b)
    for method in ("auto", "dim", "samples"):
        ours = M.frechet_distance(a, b, method=method)
        assert ours == pytest.approx(theirs, rel=1e-7, abs=1e-9), method
    assert M.frechet_distance(a, a) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_with_fewer_images_than_dimensions() -> None:
    """Singular covariances: the two routes agree (the samples route, exact singular
    values, is the accurate one; ``dim`` takes square roots of eigenvalues that are 0 up to
    rounding); scipy's sqrtm of the singular product is inaccurate there (pytorch-fid adds
    an offset), so it is not the oracle."""
    a, b = sets(40, 70, 256)
    by_dim = M.frechet_distance(a, b, method="dim")  # sqrt of eigenvalues ~1e-16: ~1e-8 off
    assert M.frechet_distance(a, b, method="samples") == pytest.approx(by_dim, rel=1e-6)
    assert M.frechet_distance(a, b) == M.frechet_distance(a, b, method="samples")


@pytest.mark.parametrize(("n_a", "n_b", "dim", "k"), [(700, 500, 64, 5), (300, 1100, 768, 3),
                                                      (2100, 1500, 32, 10)])
def test_prdc_equals_the_prdc_package(n_a: int, n_b: int, dim: int, k: int) -> None:
    fake, real = sets(n_a, n_b, dim, seed=k)
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = compute_prdc(real, fake, k)
    ours = M.prdc(real, fake, k)
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(float(value), abs=1e-12), name
    assert 0 < ours["precision"] < 1 and 0 < ours["coverage"] < 1  # not a trivial case


def test_vendi_and_mean_pairwise_distance_equal_their_definitions() -> None:
    a, _ = sets(400, 10, 96)
    a64 = a.astype(np.float64)
    a64 /= np.linalg.norm(a64, axis=1, keepdims=True)  # as vendi-score's score_X does
    k = a64 @ a64.T
    assert M.vendi_score(a) == pytest.approx(vendi.score_K(k), rel=1e-9)
    assert M.vendi_score(a) == pytest.approx(vendi.score_X(a.astype(np.float64)), rel=1e-9)
    assert M.vendi_score(a) == pytest.approx(vendi.score_dual(a.astype(np.float64)), rel=1e-9)
    assert M.vendi_score(np.repeat(a[:1], 50, 0)) == pytest.approx(1.0, abs=1e-6)
    few = a[:40]  # fewer images than dimensions: the n x n route
    assert M.vendi_score(few) == pytest.approx(vendi.score_X(few.astype(np.float64)), rel=1e-9)
    d = 1 - k
    assert M.mean_pairwise_distance(a) == pytest.approx(d[~np.eye(len(a), dtype=bool)].mean(),
                                                        rel=1e-9)


def test_bootstrap_is_deterministic_and_brackets_the_estimate() -> None:
    a, b = sets(300, 300, 32)
    reps = M.bootstrap(a, b, replicates=30, seed=7)
    again = M.bootstrap(a, b, replicates=30, seed=7, done={r: reps[r] for r in range(10)})
    assert again == reps
    point = M.all_metrics(a, b)
    lo, hi = M.interval([reps[r]["vendi_a"] for r in reps], 0.95)
    assert lo < hi
    ia, ib = M.replicate_indices(7, 3, 300, 300)
    assert reps[3] == M.all_metrics(a[ia], b[ib])
    assert point["frechet_distance"] > 0


@pytest.mark.parametrize("engine", ["numpy", "faiss"])
def test_exact_search_equals_brute_force(engine: str) -> None:
    rng = np.random.default_rng(1)
    refs = unit(rng.normal(size=(5000, 64)))
    queries = unit(rng.normal(size=(600, 64)))
    queries[:3] = refs[[10, 20, 4999]]
    dist = 1 - queries.astype(np.float64) @ refs.T.astype(np.float64)
    threshold = float(np.quantile(dist, 0.001))
    hits = [h for _, block in Searcher(refs, engine=engine).search(
        queries, 7, threshold=threshold, max_matches=4) for h in block]
    assert len(hits) == 600
    for i, h in enumerate(hits):
        order = np.lexsort((np.arange(5000), dist[i]))
        assert h.indices == list(order[:7])
        assert np.abs(np.array(h.distances) - dist[i][order[:7]]).max() < 1e-12
        assert h.under_count == int((dist[i] < threshold).sum())
        assert [j for j, _ in h.under] == list(order[:min(4, h.under_count)])
    assert hits[2].indices[0] == 4999 and abs(hits[2].distances[0]) < 1e-6


def test_approximate_search_reports_exact_distances() -> None:
    rng = np.random.default_rng(2)
    centers = unit(rng.normal(size=(40, 32)))
    refs = unit(centers[rng.integers(0, 40, 8000)] + 0.05 * rng.normal(size=(8000, 32)))
    queries = unit(centers[rng.integers(0, 40, 200)] + 0.05 * rng.normal(size=(200, 32)))
    hits = [h for _, b in Searcher(refs, engine="faiss-ivf", nprobe=8).search(queries, 5)
            for h in b]
    dist = 1 - queries.astype(np.float64) @ refs.T.astype(np.float64)
    exact = np.argsort(dist, 1)[:, :5]
    recall = np.mean([len(set(h.indices) & set(e)) / 5 for h, e in zip(hits, exact,
                                                                        strict=True)])
    assert recall > 0.9, recall
    for i, h in enumerate(hits):
        assert np.allclose(h.distances, dist[i][h.indices], atol=1e-12)


def test_store_survives_reopening_merges_shards_and_refuses_another_dim(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    vectors = unit(rng.normal(size=(100, 16)))
    store = EmbeddingStore(tmp_path, "dino_vitb16", flush_every=3)
    for i, v in enumerate(vectors):
        store.add(f"k{i}", v.tobytes())
    store.flush()
    assert len(list((tmp_path / "dino_vitb16").glob("shard-*.npy"))) == 34
    (tmp_path / "dino_vitb16" / "shard-000099.npy.tmp").write_bytes(b"half")  # a kill
    again = EmbeddingStore(tmp_path, "dino_vitb16")  # 34 shards: merged into one
    assert len(list((tmp_path / "dino_vitb16").glob("shard-*.keys"))) == 1
    assert len(again) == 100 and "k99" in again and "k100" not in again
    assert np.array_equal(again.get([f"k{i}" for i in (5, 0, 99)]), vectors[[5, 0, 99]])
    assert len(EmbeddingStore(tmp_path, "ensemble")) == 0  # variants never mix
    with pytest.raises(Exception, match="holds 16-dim embeddings"):
        EmbeddingStore(tmp_path, "dino_vitb16", dim=768)


def test_keys_are_the_bytes_not_the_name(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png((1, 2, 3)))
    (tmp_path / "copy.png").write_bytes(png((1, 2, 3)))
    (tmp_path / "b.png").write_bytes(png((1, 2, 4)))
    keys = {p: image_key(str(tmp_path / p)) for p in ("a.png", "copy.png", "b.png")}
    assert keys["a.png"] == keys["copy.png"] != keys["b.png"]
    import base64
    uri = "data:image/png;base64," + base64.b64encode(png((1, 2, 3))).decode()
    assert image_key(uri) == keys["a.png"]
    assert image_key("https://h/a.png") != image_key("https://h/b.png")


def make_sets(tmp_path: Path, n_gen: int, n_ref: int, dim: int = 32, seed: int = 0
              ) -> tuple[Path, Path, Path, np.ndarray, np.ndarray]:
    """Image files in two folders, and synthetic embeddings for them in a store."""
    gen, ref, store_dir = tmp_path / "gen", tmp_path / "ref", tmp_path / "store"
    a, b = sets(n_gen, n_ref, dim, seed)
    store = EmbeddingStore(store_dir, "dino_vitb16")
    for folder, vectors, tag in ((gen, a, 1), (ref, b, 2)):
        folder.mkdir(parents=True)
        for i, v in enumerate(vectors):
            path = folder / f"{i:04d}.png"
            path.write_bytes(png((i % 256, i // 256, tag), size=4))
            store.add(image_key(str(path)), v)
    store.flush()
    return gen, ref, store_dir, a, b


def test_nearest_from_the_store_resumes_and_restarts_when_references_change(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen, ref, store_dir, a, b = make_sets(tmp_path, 700, 300)
    out = tmp_path / "nearest.jsonl"
    args = ["nearest", str(gen), str(ref), "--k", "3", "--out", str(out), "--model-type",
            "dino_vitb16", "--store", str(store_dir), "--threshold", "0.8", "--no-progress"]
    assert main(args) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 700
    first = {json.loads(line)["id"]: json.loads(line) for line in lines}
    dist = 1 - a.astype(np.float64) @ b.T.astype(np.float64)
    for i in (0, 17, 699):
        rec = first[f"{i:04d}.png"]
        order = np.argsort(dist[i], kind="stable")[:3]
        assert [n["id"] for n in rec["nearest"]] == [f"{j:04d}.png" for j in order]
        assert rec["under_threshold_count"] == int((dist[i] < 0.8).sum())

    # Interrupted after 300 lines with half a line written: resumes without duplicates.
    out.write_text("\n".join(lines[:300]) + "\n" + lines[300][:25])
    capsys.readouterr()
    assert main(args) == 0
    assert "400 generated image(s) (300 already in" in capsys.readouterr().err.replace(
        "searching ", "")
    assert sorted(out.read_text().splitlines()) == sorted(lines)

    # One more reference: every line depends on the references, so OUT starts afresh.
    extra = ref / "new.png"
    extra.write_bytes(png((9, 9, 9), size=5))
    store = EmbeddingStore(store_dir, "dino_vitb16")
    store.add(image_key(str(extra)), a[5])  # a copy of generated image 5
    store.flush()
    assert main(args) == 0
    assert "started afresh" in capsys.readouterr().err
    recs = {json.loads(line)["id"]: json.loads(line) for line in out.read_text().splitlines()}
    assert len(recs) == 700
    assert recs["0005.png"]["nearest"][0]["id"] == "new.png"
    assert abs(recs["0005.png"]["nearest"][0]["distance"]) < 1e-6


def test_nearest_without_the_service_names_what_is_missing(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    gen, ref, store_dir, _, _ = make_sets(tmp_path, 10, 10)
    (gen / "unknown.png").write_bytes(png((200, 1, 1)))
    out = tmp_path / "n.jsonl"
    assert main(["nearest", str(gen), str(ref), "--out", str(out), "--model-type",
                 "dino_vitb16", "--store", str(store_dir), "--no-progress"]) == 0
    recs = {json.loads(line)["id"]: json.loads(line) for line in out.read_text().splitlines()}
    assert recs["unknown.png"]["error"] == "not in the store (no service to embed it)"
    assert main(["nearest", str(gen), str(ref), "--out", str(out), "--no-progress"]) == 2
    assert "give --url" in capsys.readouterr().err


def test_compare_from_the_store_equals_the_metrics_and_resumes_its_bootstrap(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen, ref, store_dir, a, b = make_sets(tmp_path, 200, 250)
    out = tmp_path / "metrics.json"
    args = ["compare", str(gen), str(ref), "--out", str(out), "--model-type", "dino_vitb16",
            "--store", str(store_dir), "--bootstrap", "12", "--no-progress", "--cross-check"]
    calls = []
    real = M.all_metrics

    def interrupted(*args: object, **kw: object) -> dict[str, float]:
        calls.append(1)
        if len(calls) == 6:  # the point estimate, then 4 replicates, then Ctrl-C
            raise KeyboardInterrupt
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(M, "all_metrics", interrupted)
    assert main(args) == 130
    partial = json.loads(out.read_text())  # the point estimates were written at once
    assert partial["bootstrap"]["done"] == 0 and "ci_low" not in partial["metrics"]["recall"]
    side = tmp_path / "metrics.json.bootstrap.jsonl"
    assert len(side.read_text().splitlines()) == 4
    calls.clear()
    def counted(*x: Any, **k: Any) -> Any:
        calls.append(1)
        return real(*x, **k)

    monkeypatch.setattr(M, "all_metrics", counted)
    assert main(args) == 0
    assert len(calls) == 1 + 8  # the point estimate and the 8 replicates not yet done
    result = json.loads(out.read_text())
    expected = real(a, b)
    for name, value in expected.items():
        entry = result["metrics"][name]
        assert entry["value"] == pytest.approx(value, rel=1e-12), name
        assert entry["ci_low"] <= entry["ci_high"]
    assert result["set_a"]["n"] == 200 and result["set_b"]["n"] == 250
    assert result["bootstrap"]["done"] == 12
    assert result["cross_check"]["max_abs_difference"] < 1e-6
    reps = M.bootstrap(a, b, replicates=12, seed=0)
    lo, hi = M.interval([reps[r]["coverage"] for r in range(12)], 0.95)
    assert (result["metrics"]["coverage"]["ci_low"], result["metrics"]["coverage"]["ci_high"]
            ) == pytest.approx((lo, hi))


def test_image_lists_csv_jsonl_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.png").write_bytes(png((1, 1, 1)))
    (tmp_path / "l.csv").write_text("id,image\nx,a.png\n,https://h/b.png\n")
    (tmp_path / "l.jsonl").write_text('{"path": "a.png", "id": 3}\n"https://h/c.png"\n')
    pq.write_table(pa.table({"url": ["a.png", "https://h/d.png"]}), tmp_path / "l.parquet")
    assert [(i.id, i.source) for i in read_images(tmp_path / "l.csv")] == [
        ("x", str(tmp_path / "a.png")), ("1", "https://h/b.png")]
    assert [(i.id, i.source) for i in read_images(tmp_path / "l.jsonl")] == [
        ("3", str(tmp_path / "a.png")), ("1", "https://h/c.png")]
    assert [(i.id, i.source) for i in read_images(tmp_path / "l.parquet")] == [
        ("0", str(tmp_path / "a.png")), ("1", "https://h/d.png")]
    assert [i.id for i in read_images(tmp_path)] == ["a.png"]


@pytest.mark.parametrize(("blocked", "extra", "kind"), [
    ("numpy", "eval", "folder"), ("faiss", "eval", "faiss"), ("pyarrow", "parquet", "parquet")])
def test_a_missing_extra_is_a_message_naming_it(tmp_path: Path, blocked: str, extra: str,
                                                kind: str) -> None:
    gen, ref, store_dir, _, _ = make_sets(tmp_path, 8, 8)
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"image": [str(p) for p in sorted(ref.iterdir())]}),
                       tmp_path / "refs.parquet")
        ref = tmp_path / "refs.parquet"
    argv = ["nearest", str(gen), str(ref), "--out", str(tmp_path / "n.jsonl"),
            "--model-type", "dino_vitb16", "--store", str(store_dir), "--no-progress"]
    if kind == "faiss":
        argv += ["--engine", "faiss"]
    code = (f"import sys; sys.modules[{blocked!r}] = None\n"
            "from similarity_client.cli import main\n"
            f"sys.exit(main({argv!r}))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2, run.stderr
    assert f"pip install 'similarity-client[{extra}]'" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
