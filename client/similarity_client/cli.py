"""similarity-client: score a data set of image pairs, resumably, with a progress bar.

::

    similarity-client score pairs.csv --url http://localhost:8080 --out scores.jsonl \\
        [--concurrency 4] [--chunk-size 32] [--report report.html]
    similarity-client score refs/ gens/ --url ... --out scores.csv   # folders, by file name
    similarity-client report scores.jsonl --html report.html
    similarity-client nearest generated/ references/ --url ... --k 5 --out nearest.jsonl \\
        [--threshold 0.1] [--report nearest.html]               # needs the [eval] extra
    similarity-client compare generated/ references/ --url ... --out metrics.json \\
        [--report compare.html]                                 # needs the [eval] extra

Exit status: 0 when every pair has a line in OUT (scores or per-pair errors; with
--fail-on-errors, 1 when any of them is an error line), 1 when some pairs could not be
scored because the service stayed unavailable or not ready (run again to retry them), 2
for a usage error, a URL that cannot be reached or a service error no retry can fix, 130
when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from . import evalcli
from .client import DEFAULT_CHUNK_SIZE, INITIAL_CHUNK_SIZE, AsyncSimilarityClient, ServiceError
from .health import NotReady, wait_until_ready
from .models import Pair
from .output import OutputError, ResultWriter, read_records
from .pairs import PairsError, read_pairs
from .report import write_report
from .retry import RetryPolicy
from .summary import DistanceStats, RunSummary, distances_of

PROG = "similarity-client"


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return n


def _header(value: str) -> tuple[str, str]:
    name, sep, content = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("expected 'Name: value'")
    return name.strip(), content.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser(
        "score", help="score pairs into OUT (resumes: pairs already in OUT are skipped)",
        description="Score PAIRS against the service into OUT. Run the same command again "
                    "after a crash or Ctrl-C: only the pairs missing from OUT are scored.")
    score.add_argument("pairs", nargs="+", type=Path, metavar="PAIRS",
                       help="a .csv or .jsonl with 'reference', 'generated' and optional "
                            "'pair_id' (paths relative to the file, or URLs), or two folders "
                            "(reference, generated) matched by file name")
    score.add_argument("--url", required=True, help="the service's base URL")
    score.add_argument("--out", required=True, type=Path,
                       help="results, .jsonl or .csv (one line per pair)")
    score.add_argument("--concurrency", type=_positive, default=4,
                       help="requests in flight at once (default 4)")
    score.add_argument("--chunk-size", type=_positive, default=DEFAULT_CHUNK_SIZE,
                       help=f"pairs per request at most (default {DEFAULT_CHUNK_SIZE}; lowered "
                            "to the service's MAX_PAIRS_PER_REQUEST when it answers 413)")
    score.add_argument("--target-seconds", type=float, default=8.0, metavar="S",
                       help=f"adapt the chunk so that one request takes about S seconds: "
                            f"start at {INITIAL_CHUNK_SIZE} pairs, then as the measured time "
                            "per pair says, up to --chunk-size (default 8; 0: always "
                            "--chunk-size)")
    score.add_argument("--wait-ready", type=float, default=300.0, metavar="S",
                       help="wait at most S seconds for a service still loading (GET /health "
                            "answers 503) before giving up with exit status 1 (default 300)")
    score.add_argument("--fail-on-errors", action="store_true",
                       help="exit 1 when any pair has an error line in OUT (for CI)")
    score.add_argument("--timeout", type=float, default=300.0,
                       help="seconds one request may take (default 300)")
    score.add_argument("--max-retries", type=int, default=10,
                       help="retries of one request on 429/502/503/504 or connection errors "
                            "(default 10)")
    score.add_argument("--max-backoff", type=float, default=30.0,
                       help="longest wait between retries, Retry-After included (default 30 s)")
    score.add_argument("--retry-errors", action="store_true",
                       help="score again the pairs that have an error line in OUT")
    score.add_argument("--report", type=Path, metavar="REPORT.html",
                       help="also write an HTML report of OUT")
    score.add_argument("--report-top", type=_positive, default=24,
                       help="pairs with the largest distances shown in the report (default 24)")
    score.add_argument("--header", type=_header, action="append", default=[],
                       metavar="'NAME: VALUE'", help="extra HTTP header (repeatable)")
    score.add_argument("--no-progress", action="store_true", help="no progress bar")
    report = sub.add_parser("report", help="write the HTML report of an output file")
    report.add_argument("out", type=Path, metavar="OUT", help="a .jsonl or .csv from 'score'")
    report.add_argument("--html", required=True, type=Path, metavar="REPORT.html")
    report.add_argument("--top", type=_positive, default=24,
                        help="pairs with the largest distances shown (default 24)")
    evalcli.add_parsers(sub, _positive, _header, DEFAULT_CHUNK_SIZE)
    return parser


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


async def _score(client: AsyncSimilarityClient, todo: list[Pair], writer: ResultWriter,
                 summary: RunSummary, progress: tqdm) -> None:
    """Stream results into OUT. SIGINT/SIGTERM cancel at an await, that is between two
    whole lines; a second signal exits at once (the lines written so far are flushed)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    signals = 0

    def stop() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            os._exit(130)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    failed = 0
    async with client:
        async for result in client.score(todo):
            summary.add(result)
            if not result.retryable:  # service unavailable says nothing about the pair
                writer.write(result)
            if not result.ok:
                failed += 1
                progress.set_postfix(failed=failed, refresh=False)
            progress.update(1)


def cmd_score(args: argparse.Namespace) -> int:
    try:
        pairset = read_pairs(args.pairs)
        writer = ResultWriter(args.out, retry_errors=args.retry_errors)
    except (PairsError, OutputError) as e:
        _error(str(e))
        return 2
    except OSError as e:
        _error(f"{e.filename}: {e.strerror}")
        return 2
    for warning in pairset.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if writer.repaired_bytes:
        print(f"{PROG}: cut a partial last line ({writer.repaired_bytes} bytes) from "
              f"{args.out}", file=sys.stderr)
    if writer.dropped_errors:
        print(f"{PROG}: {writer.dropped_errors} error line(s) removed from {args.out} to be "
              "scored again", file=sys.stderr)
    pairs = pairset.pairs
    todo = [p for p in pairs if str(p.pair_id) not in writer.done]
    summary = RunSummary(total=len(pairs), already_done=len(pairs) - len(todo))
    adaptive = args.target_seconds > 0
    print(f"{len(pairs)} pair(s); {summary.already_done} already in {args.out}; scoring "
          f"{len(todo)} with up to {args.concurrency} request(s) of up to {args.chunk_size} "
          f"pairs" + (f" (adapted to about {args.target_seconds:g} s per request)"
                      if adaptive else "") + f" at {args.url}", file=sys.stderr)
    if todo:
        try:
            unhealthy = wait_until_ready(args.url, wait_s=max(args.wait_ready, 0.0),
                                         headers=dict(args.header),
                                         say=lambda m: print(f"{PROG}: {m}", file=sys.stderr))
        except NotReady as e:
            writer.close()
            _error(str(e))
            return e.exit_code
        if unhealthy:
            print(f"{PROG}: warning: {unhealthy}", file=sys.stderr)
    client = AsyncSimilarityClient(
        args.url, concurrency=args.concurrency, chunk_size=args.chunk_size,
        timeout_s=args.timeout, headers=dict(args.header),
        retry=RetryPolicy(max_retries=args.max_retries,
                          max_delay_s=max(args.max_backoff, 0.5)),
        target_request_s=args.target_seconds if adaptive else None)
    progress = tqdm(total=len(pairs), initial=summary.already_done, unit="pair",
                    file=sys.stderr, disable=args.no_progress, smoothing=0.05,
                    dynamic_ncols=True)
    code = 0
    started = time.monotonic()
    try:
        asyncio.run(_score(client, todo, writer, summary, progress))
    except (KeyboardInterrupt, asyncio.CancelledError):
        summary.interrupted = True
        code = 130
    except ServiceError as e:
        code = 2
        _error(str(e))
    finally:
        summary.wall_s = time.monotonic() - started
        writer.close()
        progress.close()
    records = read_records(args.out)
    summary.stats = DistanceStats.of(distances_of(records))
    ids = {str(p.pair_id) for p in pairs}
    summary.errors_in_out = sum(1 for r in records
                                if r.get("error") and str(r.get("pair_id")) in ids)
    print(summary.format(out=str(args.out)))
    if client.stats.pair_limit:
        print(f"  the service's pair limit: {client.stats.pair_limit} (learned from a 413)")
    if adaptive and client.stats.requests:
        print(f"  chunk size at the end: {client.next_chunk_size} pair(s) "
              f"(adapted to about {args.target_seconds:g} s per request, at most "
              f"{client.effective_chunk_size})")
    if client.stats.retries:
        print("  retries: " + ", ".join(f"{n} x {cause}"
                                         for cause, n in client.stats.retries.most_common()))
    if code == 130:
        print(f"interrupted: {args.out} is valid; run the same command again to resume",
              file=sys.stderr)
    if args.report is not None:
        write_report(records, args.report, title=f"Similarity scores: {args.out.name}",
                     source=str(args.out), top=args.report_top)
        print(f"report: {args.report}")
    if code == 0 and summary.not_scored:
        code = 1
    if code == 0 and args.fail_on_errors and summary.errors_in_out:
        print(f"exit status 1: {summary.errors_in_out} pair(s) have error lines "
              "(--fail-on-errors)", file=sys.stderr)
        code = 1
    return code


def cmd_report(args: argparse.Namespace) -> int:
    try:
        records = read_records(args.out)
    except (OutputError, OSError) as e:
        _error(str(e))
        return 2
    write_report(records, args.html, title=f"Similarity scores: {args.out.name}",
                 source=str(args.out), top=args.top)
    print(f"report: {args.html} ({len(records)} pair(s))")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "score":
        return cmd_score(args)
    if args.command == "nearest":
        return evalcli.cmd_nearest(args)
    if args.command == "compare":
        return evalcli.cmd_compare(args)
    return cmd_report(args)
