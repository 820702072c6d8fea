"""``similarity-client nearest`` and ``compare``: a generated set against references.

Both embed their two sets through :mod:`.embedset` (the local store first, ``/embed`` for
the rest), then compute on the embeddings locally (:mod:`.search`, :mod:`.metrics`). Both
write as they go and resume:

- ``nearest`` writes one JSONL line per generated image as soon as its block of queries is
  searched; a rerun skips the images already in OUT. OUT's side file ``OUT.meta.json``
  holds a fingerprint of what the lines depend on (the references' bytes and ids, the
  variant, ``--k``, ``--threshold``, the engine): when it differs, OUT is started afresh.
- ``compare`` writes the point estimates to OUT at once, each bootstrap replicate to
  ``OUT.bootstrap.jsonl`` as it completes, and OUT again with the intervals at the end; a
  rerun reuses the replicates of the same fingerprint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .client import AsyncSimilarityClient, ServiceError
from .embedset import EmbeddedSet, embed_set, service_model_type
from .extras import MissingExtra
from .imagesets import ImageRef, read_images
from .output import _repair_tail
from .pairs import PairsError
from .retry import RetryPolicy
from .store import EmbeddingStore, StoreError

PROG = "similarity-client"


def default_store() -> Path:
    """``$SIMILARITY_CLIENT_STORE``, else ``$XDG_CACHE_HOME/similarity-client/embeddings``."""
    if os.environ.get("SIMILARITY_CLIENT_STORE"):
        return Path(os.environ["SIMILARITY_CLIENT_STORE"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "similarity-client" / "embeddings"


def add_service_options(p: argparse.ArgumentParser, positive: Callable[[str], int],
                        header: Callable[[str], tuple[str, str]], chunk_default: int) -> None:
    p.add_argument("--url", help="the service's base URL (not needed when --model-type is "
                                 "given and every image is in the store)")
    p.add_argument("--store", type=Path, default=None,
                   help="the local embedding store (default: $SIMILARITY_CLIENT_STORE or "
                        "~/.cache/similarity-client/embeddings)")
    p.add_argument("--model-type", help="the variant whose stored embeddings to use "
                                        "(default: the service's, from GET /health)")
    p.add_argument("--concurrency", type=positive, default=4,
                   help="requests in flight at once (default 4)")
    p.add_argument("--chunk-size", type=positive, default=chunk_default,
                   help=f"images per /embed request: twice this (default {chunk_default}; "
                        "lowered to MAX_IMAGES_PER_REQUEST on a 413)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds one request may take (default 300)")
    p.add_argument("--max-retries", type=int, default=10,
                   help="retries of one request on 429/502/503/504 or connection errors")
    p.add_argument("--max-backoff", type=float, default=30.0,
                   help="longest wait between retries (default 30 s)")
    p.add_argument("--header", type=header, action="append", default=[],
                   metavar="'NAME: VALUE'", help="extra HTTP header (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_parsers(sub: Any, positive: Callable[[str], int],
                header: Callable[[str], tuple[str, str]], chunk_default: int) -> None:
    near = sub.add_parser(
        "nearest", help="the k nearest references of each generated image (copy detection)",
        description="For each image of GENERATED, its --k nearest images of REFERENCES by "
                    "DreamSim distance (exact: 1 - dot of the /embed vectors), and every "
                    "reference under --threshold. Each side is a folder, or a .csv/.jsonl/"
                    ".parquet list of paths and URLs. Resumes: run it again after a stop.")
    near.add_argument("generated", type=Path, metavar="GENERATED")
    near.add_argument("references", type=Path, metavar="REFERENCES")
    near.add_argument("--k", type=positive, default=5, help="neighbours per image (default 5)")
    near.add_argument("--out", required=True, type=Path, help="results, .jsonl")
    near.add_argument("--threshold", type=float, metavar="D",
                      help="also list every reference with a distance under D")
    near.add_argument("--max-matches", type=positive, default=100,
                      help="references under D listed per image at most, the closest "
                           "(all are counted; default 100)")
    near.add_argument("--engine", choices=("auto", "numpy", "faiss"), default="auto",
                      help="exact search: numpy (blockwise BLAS), faiss (IndexFlatIP); auto: "
                           "numpy up to 10^6 references, faiss above")
    near.add_argument("--approximate", action="store_true",
                      help="faiss IndexIVFFlat instead (faster on large sets, may miss "
                           "neighbours; the distances it reports stay exact)")
    near.add_argument("--nprobe", type=positive, default=16,
                      help="IVF cells searched per query with --approximate (default 16)")
    near.add_argument("--report", type=Path, metavar="REPORT.html",
                      help="also write an HTML report of OUT")
    near.add_argument("--report-top", type=positive, default=12,
                      help="generated images with the closest matches shown (default 12)")
    add_service_options(near, positive, header, chunk_default)
    comp = sub.add_parser(
        "compare", help="distribution metrics of a generated set against a reference set",
        description="Fréchet distance, precision/recall/density/coverage, Vendi score and "
                    "mean pairwise distance on DreamSim embeddings, with bootstrap "
                    "intervals (docs/evaluation.md says what each is). SET_A is the "
                    "generated set, SET_B the reference (real) set.")
    comp.add_argument("set_a", type=Path, metavar="SET_A")
    comp.add_argument("set_b", type=Path, metavar="SET_B")
    comp.add_argument("--out", required=True, type=Path, help="metrics, .json")
    comp.add_argument("--k", type=positive, default=5,
                      help="neighbours of precision/recall/density/coverage (default 5)")
    comp.add_argument("--bootstrap", type=int, default=100, metavar="B",
                      help="bootstrap replicates (default 100; 0: none)")
    comp.add_argument("--confidence", type=float, default=0.95,
                      help="of the bootstrap intervals (default 0.95)")
    comp.add_argument("--seed", type=int, default=0, help="of the bootstrap (default 0)")
    comp.add_argument("--cross-check", action="store_true",
                      help="also compute the point estimates with the reference packages "
                           "(prdc, vendi-score, scipy's sqrtm) and record the differences")
    comp.add_argument("--report", type=Path, metavar="REPORT.html",
                      help="also write an HTML report")
    add_service_options(comp, positive, header, chunk_default)


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _fingerprint(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class _Setup:
    """What both commands do first: read the sets, open the store, embed both sides."""

    def __init__(self, args: argparse.Namespace, sources: tuple[Path, Path],
                 labels: tuple[str, str]) -> None:
        self.args = args
        self.sets = [read_images(s) for s in sources]
        if args.model_type:
            model_type = args.model_type
        elif args.url:
            model_type = service_model_type(args.url, headers=dict(args.header))
        else:
            raise PairsError("give --url (the service), or --model-type to use the store "
                             "alone")
        store_root = args.store or default_store()
        self.store = EmbeddingStore(store_root, model_type)
        print(f"{len(self.sets[0])} {labels[0]} and {len(self.sets[1])} {labels[1]}; "
              f"store {self.store.dir} ({len(self.store)} embeddings of {model_type})",
              file=sys.stderr)
        make_client = None
        if args.url:
            def make_client() -> AsyncSimilarityClient:
                return AsyncSimilarityClient(
                    args.url, concurrency=args.concurrency, chunk_size=args.chunk_size,
                    timeout_s=args.timeout, headers=dict(args.header),
                    retry=RetryPolicy(max_retries=args.max_retries,
                                      max_delay_s=max(args.max_backoff, 0.5)))
        self.embedded: list[EmbeddedSet] = []
        for images, label in zip(self.sets, labels, strict=True):
            e = embed_set(images, self.store, make_client, label=label,
                          progress=not args.no_progress)
            print(f"  {label}: {len(e.images)} embedded ({e.cached} distinct from the "
                  f"store, {e.embedded} from the service, {len(e.failed)} failed) in "
                  f"{e.wall_s:.1f} s", file=sys.stderr)
            for image_id, reason in list(e.failed.items())[:5]:
                print(f"    {image_id}: {reason}", file=sys.stderr)
            if len(e.failed) > 5:
                print(f"    ... and {len(e.failed) - 5} more", file=sys.stderr)
            self.embedded.append(e)
        self.model_type = model_type

    @property
    def not_embedded(self) -> int:
        return sum(e.not_embedded for e in self.embedded)


def _run(body: Callable[[], int]) -> int:
    try:
        return body()
    except (PairsError, StoreError, MissingExtra) as e:
        _error(str(e))
        return 2
    except ServiceError as e:
        _error(str(e))
        return 2
    except OSError as e:
        _error(f"{e.filename}: {e.strerror}" if e.filename else str(e))
        return 2
    except KeyboardInterrupt:
        print("interrupted: what was done is kept; run the same command again to resume",
              file=sys.stderr)
        return 130


# --- nearest --------------------------------------------------------------------------

def _read_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.exists():
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    out.append(json.loads(line))
    return out


def cmd_nearest(args: argparse.Namespace) -> int:
    return _run(lambda: _nearest(args))


def _nearest(args: argparse.Namespace) -> int:
    if args.out.suffix.lower() not in (".jsonl", ".ndjson"):
        raise PairsError(f"{args.out}: OUT must end in .jsonl")
    if args.threshold is not None and not 0 <= args.threshold <= 2:
        raise PairsError("--threshold is a DreamSim distance, between 0 and 2")
    setup = _Setup(args, (args.generated, args.references), ("generated", "references"))
    gen, refs = setup.embedded
    if gen.not_embedded or refs.not_embedded:
        _error(f"{setup.not_embedded} image(s) could not be embedded (service unavailable); "
               "nothing searched: run the same command again to resume")
        return 1
    if not refs.images:
        raise PairsError(f"{args.references}: no reference could be embedded")
    from .search import Searcher  # needs numpy: after the sets are known to be readable

    engine = "faiss-ivf" if args.approximate else args.engine
    fingerprint = _fingerprint(model_type=setup.model_type, k=args.k, threshold=args.threshold,
                               max_matches=args.max_matches, engine=engine,
                               nprobe=args.nprobe if args.approximate else None,
                               references=[(r.id, key) for r, key in
                                           zip(refs.images, refs.keys, strict=True)])
    meta_path = args.out.with_name(args.out.name + ".meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if args.out.exists() and meta.get("fingerprint") != fingerprint:
        print(f"{args.out} was computed against other references or options: started "
              "afresh", file=sys.stderr)
        args.out.unlink()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = meta_path.with_name(meta_path.name + ".tmp")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "model_type": setup.model_type,
                               "k": args.k, "threshold": args.threshold, "engine": engine,
                               "references": str(args.references),
                               "generated": str(args.generated)}))
    os.replace(tmp, meta_path)
    if args.out.exists():
        _repair_tail(args.out)
    done = {str(r["id"]) for r in _read_lines(args.out)}
    failed_gen = {i: reason for i, reason in gen.failed.items() if i not in done}
    todo = [i for i, image in enumerate(gen.images) if image.id not in done]
    started = time.monotonic()
    print(f"searching {len(todo)} generated image(s) ({len(done)} already in {args.out}) "
          f"against {len(refs.images)} references", file=sys.stderr)
    with args.out.open("a", encoding="utf-8") as out:
        sources = {im.id: im.source for im in setup.sets[0]}
        for image_id, reason in failed_gen.items():
            source = sources[image_id]
            out.write(json.dumps({"id": image_id, "generated": source, "error": reason}) + "\n")
        out.flush()
        if todo:
            searcher = Searcher(refs.vectors, engine=engine, nprobe=args.nprobe)
            bar = tqdm(total=len(gen.images), initial=len(gen.images) - len(todo),
                       desc="searching", unit="img", file=sys.stderr,
                       disable=args.no_progress, dynamic_ncols=True)
            try:
                for start, hits in searcher.search(gen.vectors[todo], args.k,
                                                   threshold=args.threshold,
                                                   max_matches=args.max_matches):
                    lines = []
                    for offset, h in enumerate(hits):
                        image = gen.images[todo[start + offset]]
                        record: dict[str, Any] = {"id": image.id, "generated": image.source,
                                                  "nearest": [_ref(refs.images[i], d) for i, d
                                                              in zip(h.indices, h.distances,
                                                                     strict=True)]}
                        if args.threshold is not None:
                            record["under_threshold"] = [_ref(refs.images[i], d)
                                                         for i, d in h.under]
                            record["under_threshold_count"] = h.under_count
                        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
                    out.write("".join(lines))  # whole lines, a block at a time
                    out.flush()
                    bar.update(len(hits))
            finally:
                bar.close()
                os.fsync(out.fileno())
        print(f"  engine {searcher.engine if todo else '-'}; searched in "
              f"{time.monotonic() - started:.1f} s", file=sys.stderr)
    records = _read_lines(args.out)
    firsts = [r["nearest"][0]["distance"] for r in records if r.get("nearest")]
    print(f"done: {len(records)} generated image(s) in {args.out} "
          f"({sum(1 for r in records if r.get('error'))} failed)")
    if firsts:
        firsts.sort()
        print(f"  nearest-reference distance: min {firsts[0]:.4f}, median "
              f"{firsts[len(firsts) // 2]:.4f}, max {firsts[-1]:.4f}")
    if args.threshold is not None:
        flagged = [r for r in records if r.get("under_threshold_count")]
        print(f"  {len(flagged)} generated image(s) with a reference under {args.threshold} "
              f"({sum(r['under_threshold_count'] for r in flagged)} pair(s))")
    if args.report is not None:
        from .evalreport import write_nearest_report

        write_nearest_report(records, args.report, source=str(args.out),
                             threshold=args.threshold, top=args.report_top)
        print(f"report: {args.report}")
    return 0


def _ref(image: ImageRef, distance: float) -> dict[str, Any]:
    return {"id": image.id, "reference": image.source, "distance": distance}


# --- compare --------------------------------------------------------------------------

def cmd_compare(args: argparse.Namespace) -> int:
    return _run(lambda: _compare(args))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _compare(args: argparse.Namespace) -> int:
    from . import metrics as M

    if args.out.suffix.lower() != ".json":
        raise PairsError(f"{args.out}: OUT must end in .json")
    if not 0 < args.confidence < 1:
        raise PairsError("--confidence is between 0 and 1, e.g. 0.95")
    if args.bootstrap < 0:
        raise PairsError("--bootstrap is a number of replicates, 0 or more")
    setup = _Setup(args, (args.set_a, args.set_b), ("SET_A (generated)", "SET_B (reference)"))
    a, b = setup.embedded
    if setup.not_embedded:
        _error(f"{setup.not_embedded} image(s) could not be embedded (service unavailable); "
               "nothing computed: run the same command again to resume")
        return 1
    for e, name in ((a, args.set_a), (b, args.set_b)):
        if len(e.images) <= args.k:
            raise PairsError(f"{name}: {len(e.images)} image(s) embedded; the metrics need "
                             f"more than --k={args.k}")
    fingerprint = _fingerprint(model_type=setup.model_type, k=args.k, seed=args.seed,
                               a=sorted(a.keys), b=sorted(b.keys))
    started = time.monotonic()
    point = M.all_metrics(a.vectors, b.vectors, args.k)
    result: dict[str, Any] = {
        "model_type": setup.model_type,
        "set_a": {"source": str(args.set_a), "role": "generated", "n": len(a.images),
                  "failed": a.failed},
        "set_b": {"source": str(args.set_b), "role": "reference", "n": len(b.images),
                  "failed": b.failed},
        "k": args.k,
        "bootstrap": {"replicates": args.bootstrap, "done": 0, "confidence": args.confidence,
                      "seed": args.seed},
        "metrics": {name: {"value": value} for name, value in point.items()},
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if args.cross_check:
        result["cross_check"] = cross_check(a.vectors, b.vectors, args.k, point)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    _write_json(args.out, result)  # the point estimates now, the intervals when done
    side = args.out.with_name(args.out.name + ".bootstrap.jsonl")
    done: dict[int, dict[str, float]] = {}
    if side.exists():
        _repair_tail(side)
        for line in _read_lines(side):
            if line.get("fingerprint") == fingerprint:
                done[int(line["replicate"])] = line["metrics"]
        if len(done) < len(_read_lines(side)):  # replicates of other sets: start afresh
            side.unlink()
            done = {}
    wanted = {r: m for r, m in done.items() if r < args.bootstrap}
    bar = tqdm(total=args.bootstrap, initial=len(wanted), desc="bootstrap", unit="rep",
               file=sys.stderr, disable=args.no_progress or args.bootstrap == 0,
               dynamic_ncols=True)
    try:
        with side.open("a", encoding="utf-8") as f:
            def on_replicate(r: int, m: dict[str, float]) -> None:
                f.write(json.dumps({"fingerprint": fingerprint, "replicate": r,
                                    "metrics": m}) + "\n")
                f.flush()
                bar.update(1)

            reps = M.bootstrap(a.vectors, b.vectors, replicates=args.bootstrap,
                               seed=args.seed, k=args.k, done=wanted,
                               on_replicate=on_replicate)
    finally:
        bar.close()
    result["bootstrap"]["done"] = len(reps)
    if reps:
        for name, entry in result["metrics"].items():
            values = [reps[r][name] for r in sorted(reps)]
            lo, hi = M.interval(values, args.confidence)
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1))
            entry.update(ci_low=lo, ci_high=hi, bootstrap_std=std)
    result["wall_s"] = round(time.monotonic() - started, 2)
    _write_json(args.out, result)
    print(format_metrics(result))
    print(f"metrics: {args.out}")
    if args.report is not None:
        from .evalreport import write_compare_report

        write_compare_report(result, args.report,
                             a_to_b=M.nearest_distances(a.vectors, b.vectors),
                             b_to_b=M.nearest_distances(b.vectors))
        print(f"report: {args.report}")
    return 0


def cross_check(a: Any, b: Any, k: int, point: dict[str, float]) -> dict[str, Any]:
    """The point estimates again with the reference implementations (``prdc``,
    ``vendi-score``, ``scipy.linalg.sqrtm``), and the largest difference from ours."""
    import contextlib
    import io

    from .extras import require

    np = require("numpy", "--cross-check")
    linalg = require("scipy.linalg", "--cross-check")
    prdc = require("prdc", "--cross-check")
    vendi = require("vendi_score.vendi", "--cross-check")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    mu = a64.mean(0) - b64.mean(0)
    ca, cb = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    root = linalg.sqrtm(ca @ cb)
    fd = float(mu @ mu + np.trace(ca) + np.trace(cb) - 2 * np.trace(np.real(root)))
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        p = prdc.compute_prdc(b, a, k)
    theirs = {"frechet_distance": fd, **{key: float(v) for key, v in p.items()},
              "vendi_a": float(vendi.score_dual(a64)), "vendi_b": float(vendi.score_dual(b64))}
    return {"reference_values": theirs,
            "max_abs_difference": max(abs(theirs[key] - point[key]) for key in theirs)}


def format_metrics(result: dict[str, Any]) -> str:
    lines = [f"{result['set_a']['n']} generated vs {result['set_b']['n']} reference images "
             f"({result['model_type']}); {result['bootstrap']['done']} bootstrap replicates"]
    for name, entry in result["metrics"].items():
        ci = (f"  [{entry['ci_low']:.4f}, {entry['ci_high']:.4f}]" if "ci_low" in entry
              else "")
        lines.append(f"  {name:<26} {entry['value']:.4f}{ci}")
    return "\n".join(lines)
