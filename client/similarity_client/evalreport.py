"""Self-contained HTML reports of ``nearest`` and ``compare`` (one page, no external
resources), in the style of :mod:`.report`.

- nearest: statistics, a histogram of each generated image's distance to its nearest
  reference (with the threshold marked), and the generated images with the closest matches,
  each beside its k nearest references as thumbnails.
- compare: every metric with its bootstrap interval and the sample sizes, and histograms of
  the nearest-reference distance of each generated image and of each reference (to its
  nearest other reference), the scale the first is read against.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .report import _CSS, _side, histogram_svg
from .summary import DistanceStats

_EXTRA_CSS = """
.match { display: flex; gap: 8px; overflow-x: auto } .match figure { flex: 0 0 auto }
.match figure.gen img { outline: 3px solid #4a78b5 }
.under { color: #b5302a; font-weight: 600 }
table.metrics { border-collapse: collapse } table.metrics td, table.metrics th {
  border: 1px solid #ddd; padding: 4px 10px; text-align: right }
table.metrics th:first-child, table.metrics td:first-child { text-align: left }
"""


def _page(title: str, body: list[str]) -> str:
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      f"<title>{html.escape(title)}</title><style>{_CSS}{_EXTRA_CSS}</style>"
                      "</head><body>", f"<h1>{html.escape(title)}</h1>", *body,
                      "</body></html>"])


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def build_nearest_report(records: list[dict[str, Any]], *, source: str = "",
                         threshold: float | None = None, top: int = 12) -> str:
    """The page for the lines of a ``nearest`` OUT file."""
    found = [r for r in records if r.get("nearest")]
    firsts = [float(r["nearest"][0]["distance"]) for r in found]
    stats = DistanceStats.of(firsts)
    failed = [r for r in records if r.get("error")]
    body = [f"<p>{len(records)} generated image(s) from <code>{html.escape(source)}</code>, "
            f"generated {_now()}.</p>"]
    rows = [("searched", str(len(found))), ("failed", str(len(failed)))]
    if threshold is not None:
        flagged = sum(1 for r in found if r.get("under_threshold_count"))
        rows += [("threshold", f"{threshold:g}"),
                 ("with a reference under it", str(flagged))]
    if stats is not None:
        rows += [(f"nearest distance {k}", f"{getattr(stats, k):.4f}")
                 for k in ("mean", "median", "min", "max")]
    body.append('<table class="stats">' + "".join(
        f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>")
    if stats is not None:
        body.append("<h2>Distance of each generated image to its nearest reference</h2>")
        marks = [("threshold", threshold, "#b5302a")] if threshold is not None else []
        body.append(histogram_svg(firsts, stats=stats, unit="generated image(s)",
                                  marks=marks))
        ranked = sorted(found, key=lambda r: float(r["nearest"][0]["distance"]))[:top]
        body.append(f"<h2>The {len(ranked)} generated image(s) closest to a reference</h2>")
        body.append('<div class="list">')
        for rank, r in enumerate(ranked, start=1):
            d0 = max(0.0, float(r["nearest"][0]["distance"]))  # 1 - dot can be -1e-8
            under = threshold is not None and d0 < threshold
            body.append(f'<div class="card" data-id="{html.escape(str(r["id"]))}">'
                        f'<div class="score{" under" if under else ""}">#{rank} '
                        f'{html.escape(str(r["id"]))}: nearest distance {d0:.4f}'
                        f'{" (under the threshold)" if under else ""}</div>'
                        '<div class="match">'
                        + _side(str(r["generated"]), "generated").replace(
                            "<figure>", '<figure class="gen">', 1)
                        + "".join(_side(str(n["reference"]),
                                        f"#{j} distance {max(0.0, float(n['distance'])):.4f}")
                                  for j, n in enumerate(r["nearest"], start=1))
                        + "</div></div>")
        body.append("</div>")
    if failed:
        body.append(f"<h2>Failed ({len(failed)})</h2><ul>")
        body += [f"<li>{html.escape(str(r['id']))}: {html.escape(str(r['error']))}</li>"
                 for r in failed[:200]]
        body.append("</ul>")
    return _page(f"Nearest references: {Path(source).name}", body)


def write_nearest_report(records: list[dict[str, Any]], path: Path, **kwargs: Any) -> None:
    _write(path, build_nearest_report(records, **kwargs))


_DESCRIPTIONS = {
    "frechet_distance": "Fréchet distance between Gaussians fitted to the two sets (FID's "
                        "formula on DreamSim features); 0 when they match",
    "precision": "share of generated images inside the reference set's k-NN balls",
    "recall": "share of reference images inside the generated set's k-NN balls",
    "density": "mean number of reference balls holding a generated image, over k",
    "coverage": "share of reference images whose ball holds a generated image",
    "vendi_a": "Vendi score of the generated set (effective number of distinct images)",
    "vendi_b": "Vendi score of the reference set",
    "mean_pairwise_distance_a": "mean DreamSim distance between two generated images",
    "mean_pairwise_distance_b": "mean DreamSim distance between two reference images",
}


def build_compare_report(result: dict[str, Any], *, a_to_b: Any, b_to_b: Any) -> str:
    """The page for a ``compare`` result (the metrics.json content)."""
    boot = result["bootstrap"]
    body = [f"<p>SET_A (generated) <code>{html.escape(result['set_a']['source'])}</code>: "
            f"n = {result['set_a']['n']}; SET_B (reference) "
            f"<code>{html.escape(result['set_b']['source'])}</code>: "
            f"n = {result['set_b']['n']}; {html.escape(result['model_type'])} embeddings; "
            f"k = {result['k']}; {boot['done']} bootstrap replicates, "
            f"{boot['confidence']:.0%} intervals; generated {_now()}.</p>",
            '<table class="metrics"><tr><th>metric</th><th>value</th><th>interval</th>'
            "<th>bootstrap std</th><th>what it is</th></tr>"]
    for name, entry in result["metrics"].items():
        ci = (f"{entry['ci_low']:.4f} to {entry['ci_high']:.4f}" if "ci_low" in entry
              else "-")
        std = f"{entry['bootstrap_std']:.4f}" if "bootstrap_std" in entry else "-"
        body.append(f'<tr class="metric" data-name="{name}"><td>{name}</td>'
                    f"<td>{entry['value']:.4f}</td><td>{ci}</td><td>{std}</td>"
                    f'<td style="text-align:left">{html.escape(_DESCRIPTIONS.get(name, ""))}'
                    "</td></tr>")
    body.append("</table>")
    for title, values, svg_id in (
            ("Distance of each generated image to its nearest reference", a_to_b,
             "histogram"),
            ("Distance of each reference to its nearest other reference (the scale)", b_to_b,
             "histogram-ref")):
        values = [float(v) for v in values]
        if values:
            body.append(f"<h2>{title}</h2>")
            body.append(histogram_svg(values, stats=DistanceStats.of(values), svg_id=svg_id,
                                      unit="image(s)"))
    return _page("Generated set against reference set", body)


def write_compare_report(result: dict[str, Any], path: Path, **kwargs: Any) -> None:
    _write(path, build_compare_report(result, **kwargs))


def _write(path: Path, page: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
