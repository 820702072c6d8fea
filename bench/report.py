"""The benchmark's report: one table with the ratios, the machine and the settings, printed
and written as JSON and Markdown."""

from __future__ import annotations

import json
import os
import traceback

from bench.run_state import Run
from bench.settings import RANDOM_WEIGHTS_NOTE, Settings
from bench.upstream import upstream_time


def fmt_or_na(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def build_tables(run: Run, s: Settings) -> tuple[list[str], list[str]]:
    """(plain text lines, Markdown lines)."""
    res, args = run.results, run.args
    m = res["machine"]
    up = res.get("upstream")
    gpu = m["gpu"] or "none"
    head = [
        f"machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"{m['memory_gib']} GiB, torch threads {m['torch_threads']}, GPU: {gpu}",
        f"device: {s.device} (DEVICE={s.device_requested}), service precision {s.precision} "
        f"(PRECISION={s.precision_requested}), upstream fp32 (always), "
        f"MODEL_TYPE={s.model_type}, BATCH_SIZE_LIMIT={s.batch_size_limit}",
        "weights: " + (f"real, {s.weights_dir}" if s.weights == "real"
                       else f"random test checkpoint, {s.weights_dir} ({RANDOM_WEIGHTS_NOTE})"),
    ]
    im = res.get("images", {})
    if im.get("count"):
        head.append(
            f"images: {im['count']} distinct photographs cut from {len(im['sources'])} "
            f"scikit-image pictures, sides {im['min_side']}-{im['max_side']} px, "
            f"{im['mean_megapixels']} MP and {im['mean_kb']} KB on average, "
            f"{im['jpeg']} JPEG / {im['png']} PNG ({im['grey']} greyscale); "
            f"every request sends images not sent before")
    text = ["", "=" * 100, f"DreamSim benchmark, {res['started']}", *head, ""]
    md = [f"DreamSim benchmark, {res['started']}", "", *[f"- {h}" for h in head], ""]

    if up:
        note = (f"upstream naive: dreamsim {m['versions'].get('dreamsim')}, per pair "
                f"preprocess(Image.open(file)) x2 + model(a, b), one pair at a time, "
                f"fp32 on {s.device}; measured on {up['pairs']} pairs: "
                f"{up['mean_per_pair_s'] * 1000:.0f} ms per pair on average (preprocess "
                f"{up['mean_preprocess_s'] * 1000:.0f} ms, model {up['mean_model_s'] * 1000:.0f}"
                f" ms; median {up['median_per_pair_s'] * 1000:.0f} ms); upstream s = pairs x "
                f"that mean, * = more pairs than were run")
    else:
        note = "upstream naive: skipped"

    rows = res.get("batches", [])
    if rows:
        text.append(f"One client, sequential requests (median of {args.repeats}), "
                    "base64 pairs over HTTP")
        hdr = ("pairs", "service s", "ms/pair", "pairs/s", "server ms", "upstream s", "speedup")
        text.append(f"{hdr[0]:>7} {hdr[1]:>10} {hdr[2]:>9} {hdr[3]:>9} {hdr[4]:>10} "
                    f"{hdr[5]:>11} {hdr[6]:>8}")
        md += [f"One client, sequential requests (median of {args.repeats}):", "",
               "| " + " | ".join(hdr) + " |", "|" + "---:|" * len(hdr)]
        for row in rows:
            n, wall = row["pairs"], row["wall_s"]
            ut, scaled = upstream_time(up, n)
            row["upstream_s"], row["upstream_scaled"] = ut, scaled
            row["speedup"] = ut / wall if ut else None
            ustr = ("n/a" if ut is None else f"{ut:.2f}" + ("*" if scaled else ""))
            sp = fmt_or_na(row["speedup"], ".2f") + ("x" if row["speedup"] else "")
            cells = (str(n), f"{wall:.3f}", f"{1000 * wall / n:.1f}", f"{n / wall:.2f}",
                     f"{row['server_ms']:.0f}", ustr, sp)
            text.append(f"{cells[0]:>7} {cells[1]:>10} {cells[2]:>9} {cells[3]:>9} "
                        f"{cells[4]:>10} {cells[5]:>11} {cells[6]:>8}")
            md.append("| " + " | ".join(c.replace("*", "\\*") for c in cells) + " |")
        text.append(note)
        md += ["", note.replace("*", "\\*"), ""]
        extra = []
        if "again" in res:
            a = res["again"]
            first = next((r["walls_s"][0] for r in rows if r["pairs"] == a["pairs"]), None)
            extra.append(f"the same {a['pairs']} pairs sent again (every image seen before: what "
                         f"an embedding cache saves): {a['wall_s']:.3f} s (first time "
                         f"{fmt_or_na(first)} s)")
        if "one_reference" in res:
            o = res["one_reference"]
            extra.append(f"one reference x {o['pairs']} generated ({o['images']} distinct images "
                         f"instead of {2 * o['pairs']}: deduplication): {o['wall_s']:.3f} s")
        if "pipelining" in res:
            pl = res["pipelining"]
            extra.append(
                f"{pl['pairs']} pairs with decoding overlapped with inference (chunks of "
                f"{pl['chunk_images']} images sent while the rest decode): "
                f"{pl['pipelined_median_s']:.3f} s; decoding all, then one call "
                f"(PIPELINE_CHUNK_IMAGES=0): {pl['single_call_median_s']:.3f} s (medians of "
                f"{len(pl['pipelined_s'])}, same requests, alternating order; "
                f"{pl['single_call_median_s'] / pl['pipelined_median_s']:.2f}x; predictor and "
                f"transformer share the cores here: see python -m bench.studies.pipelining)")
        if extra:
            text += ["", *extra]
            md += [f"- {e}" for e in extra] + [""]

    c = res.get("concurrent")
    if c:
        up_rate = 1 / up["mean_per_pair_s"] if up else None
        single = next((r for r in rows if r["pairs"] == c["pairs_per_request"]), None)
        single_rate = c["pairs_per_request"] / single["wall_s"] if single else None
        c["speedup_vs_upstream"] = c["pairs_per_s"] / up_rate if up_rate else None
        line = (f"{c['clients']} concurrent clients x {c['rounds']} requests x "
                f"{c['pairs_per_request']} pairs = {c['pairs']} pairs in {c['wall_s']:.1f} s: "
                f"{c['pairs_per_s']:.2f} pairs/s, latency p50 {c['latency_p50_s']:.2f} s, "
                f"p95 {c['latency_p95_s']:.2f} s; one client at {c['pairs_per_request']} pairs: "
                f"{fmt_or_na(single_rate, '.2f')} pairs/s; upstream naive: "
                f"{fmt_or_na(up_rate, '.2f')} pairs/s "
                f"(speedup {fmt_or_na(c['speedup_vs_upstream'], '.2f')}x)")
        text += ["", line]
        md += [f"- {line}", ""]

    comp = []
    d = res.get("decode")
    if d:
        parts = []
        for k in ("jpeg", "png", "all"):
            if k in d:
                parts.append(f"{k.upper() if k != 'all' else 'all'} "
                             f"{d[k]['single_images_per_s']:.1f} / "
                             f"{d[k]['pool_images_per_s']:.1f}")
        comp.append(f"transformer decode alone (decode_image, images/s, 1 thread / "
                    f"{d['threads']} threads): " + ", ".join(parts))
    p = res.get("predictor")
    if p:
        comp.append(f"predictor model alone, in process ({p['device']}, {p['dtype']}): "
                    f"{p['batch_images_per_s']:.2f} images/s at batch {p['batch']}, "
                    f"{p['batch1_images_per_s']:.2f} images/s at batch 1 "
                    f"(load {p['load_s']:.1f} s)")
    g = res.get("grpc")
    if g:
        comp.append(f"predictor over gRPC v2 (raw uint8, {g['per_call']} images a call): "
                    f"{g['images_per_s']:.2f} images/s")
    if up:
        comp.append(f"upstream model alone: {2 / up['mean_model_s']:.2f} images/s (batch 1, "
                    f"two images a call)")
    fid = res.get("fidelity")
    if fid:
        comp.append(f"service vs upstream distances on the same {fid['pairs']} pairs: max |diff| "
                    f"{fid['max_abs_diff']:.2e}, mean {fid['mean_abs_diff']:.2e} (service "
                    f"{s.precision}, upstream fp32)")
    if comp:
        text += ["", "Components", *[f"  {x}" for x in comp]]
        md += ["Components:", "", *[f"- {x}" for x in comp], ""]
    cmd = "make bench" + (f" BENCH_ARGS='{' '.join(res['argv'])}'" if res["argv"] else "")
    env = " ".join(f"{k}={os.environ[k]}" for k in ("DEVICE", "PRECISION", "MODEL_TYPE",
                                                    "BATCH_SIZE_LIMIT") if k in os.environ)
    repro = f"reproduce: {env + ' ' if env else ''}{cmd}  (total {res['total_s']:.0f} s)"
    text += ["", repro, "=" * 100]
    md += [f"Reproduce: `{env + ' ' if env else ''}{cmd}` (the run took {res['total_s']:.0f} s)."]
    return text, md


def write_outputs(run: Run, s: Settings | None, text_only: bool = False) -> None:
    args, res = run.args, run.results
    text: list[str] = []
    md: list[str] = []
    if s is not None and "machine" in res:
        try:
            text, md = build_tables(run, s)
        except Exception:  # a partial run: keep the JSON at least
            traceback.print_exc()
    if text:
        print("\n".join(text), flush=True)
    if text_only:
        return
    res["phases_s"] = run.phases
    for path in (args.json, args.markdown):
        path.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2, default=str) + "\n")
    if md:
        args.markdown.write_text("\n".join(md) + "\n")
        print(f"results: {args.json}, {args.markdown}", flush=True)
    else:
        print(f"results: {args.json}", flush=True)

