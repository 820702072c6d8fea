"""A self-contained HTML report of an output file: one page, no external resources.

It shows the distance statistics, a histogram of distances (inline SVG), the pairs with the
largest distances side by side as thumbnails (embedded as data URIs, downscaled with
Pillow when it is installed), and the failed pairs with their reasons. Images given as
URLs are not fetched (the client never fetches URLs): they appear as links.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .inputs import is_passthrough
from .summary import DistanceStats, distances_of

THUMB_PX = 224
RAW_EMBED_MAX_BYTES = 400_000  # without Pillow, larger files are not embedded
_MAGIC = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif",
          b"RIFF": "image/webp", b"BM": "image/bmp"}


def _thumbnail(source: str) -> str | None:
    """A data URI of a small version of a local image; None when it cannot be shown."""
    if source.startswith("data:"):
        return source if len(source) <= 2 * RAW_EMBED_MAX_BYTES else None
    if is_passthrough(source):
        return None
    try:
        data = Path(source).read_bytes()
    except OSError:
        return None
    try:
        from PIL import Image
    except ImportError:
        mime = next((m for magic, m in _MAGIC.items() if data.startswith(magic)), None)
        if mime is None or len(data) > RAW_EMBED_MAX_BYTES:
            return None
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.thumbnail((THUMB_PX, THUMB_PX))
            thumb = img.convert("RGB")
    except Exception:  # any decoding failure: the report shows a placeholder instead
        return None
    buf = io.BytesIO()
    thumb.save(buf, "JPEG", quality=85)
    return f"data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}"


def histogram_svg(distances: Sequence[float], *, bins: int = 30, width: int = 760,
                  height: int = 260, stats: DistanceStats | None = None,
                  svg_id: str = "histogram", unit: str = "pair(s)",
                  marks: Sequence[tuple[str, float, str]] = ()) -> str:
    """Inline SVG: counts of distances in ``bins`` equal bins, with mean/median/p95 marks
    (and any further ``(name, value, colour)`` marks)."""
    lo, hi = min(distances), max(distances)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.005, hi + 0.005
    counts = [0] * bins
    for d in distances:
        counts[min(bins - 1, int((d - lo) / (hi - lo) * bins))] += 1
    top = max(counts)
    left, right, bottom, up = 48, 28, 36, 12
    pw, ph = width - left - right, height - bottom - up
    bw = pw / bins

    def x_of(v: float) -> float:
        return left + (v - lo) / (hi - lo) * pw

    parts = [f'<svg id="{svg_id}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="histogram of {len(distances)} distances">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>']
    for i, c in enumerate(counts):
        h = ph * c / top if top else 0
        a, b = lo + (hi - lo) * i / bins, lo + (hi - lo) * (i + 1) / bins
        parts.append(f'<rect class="bar" x="{left + i * bw + 1:.1f}" y="{up + ph - h:.1f}" '
                     f'width="{max(bw - 2, 1):.1f}" height="{h:.1f}" fill="#4a78b5">'
                     f'<title>{a:.4f} to {b:.4f}: {c} {unit}</title></rect>')
    parts.append(f'<line x1="{left}" y1="{up + ph}" x2="{left + pw}" y2="{up + ph}" '
                 'stroke="#333"/>')
    parts.append(f'<line x1="{left}" y1="{up}" x2="{left}" y2="{up + ph}" stroke="#333"/>')
    for k in range(6):
        v = lo + (hi - lo) * k / 5
        parts.append(f'<text x="{x_of(v):.1f}" y="{height - 18}" font-size="11" '
                     f'text-anchor="middle">{v:.3f}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 3}" font-size="11" '
                 'text-anchor="middle">distance</text>')
    for k in (0, top):
        parts.append(f'<text x="{left - 6}" y="{up + ph - ph * k / max(top, 1) + 4:.1f}" '
                     f'font-size="11" text-anchor="end">{k}</text>')
    shown = list(marks)
    if stats is not None:
        shown[:0] = [("mean", stats.mean, "#d9534f"), ("median", stats.median, "#2a9d3a"),
                     ("p95", stats.p95, "#e69500")]
    if shown:
        for row, (name, v, color) in enumerate(shown):
            if not lo <= v <= hi:
                continue
            x = x_of(v)
            parts.append(f'<line x1="{x:.1f}" y1="{up}" x2="{x:.1f}" y2="{up + ph}" '
                         f'stroke="{color}" stroke-dasharray="4 3"><title>{name} {v:.4f}'
                         '</title></line>')
            # Staggered, with a white halo: the marks can sit close together or on a bar.
            parts.append(f'<text x="{x + 3:.1f}" y="{up + 10 + 12 * row}" font-size="10" '
                         f'fill="{color}" stroke="#fff" stroke-width="3" '
                         f'paint-order="stroke">{name} {v:.3f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _side(source: str, caption: str) -> str:
    uri = _thumbnail(source)
    name = html.escape(Path(source).name if not is_passthrough(source) else source)
    if uri is not None:
        img = f'<img class="thumb" src="{uri}" alt="{caption}: {name}">'
    elif source.startswith(("http://", "https://")):
        img = (f'<a class="nothumb" href="{html.escape(source)}">URL (not fetched by the '
               'client)</a>')
    else:
        img = '<div class="nothumb">not available</div>'
    return (f'<figure>{img}<figcaption>{caption}<br><span title="{html.escape(source)}">'
            f'{name[:60]}</span></figcaption></figure>')


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fafafa }
h1 { font-size: 22px } h2 { font-size: 17px; margin-top: 28px }
table.stats td, table.stats th { padding: 2px 12px 2px 0; text-align: left }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 14px }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 10px }
.card .pair { display: flex; gap: 8px } figure { margin: 0; flex: 1; text-align: center }
img.thumb { max-width: 224px; max-height: 224px; border: 1px solid #ccc }
.nothumb { height: 120px; display: flex; align-items: center; justify-content: center;
           background: #eee; color: #666 }
figcaption { font-size: 12px; color: #555; word-break: break-all }
.score { font-weight: 600; margin-bottom: 6px }
table.errors { border-collapse: collapse } table.errors td, table.errors th {
  border: 1px solid #ddd; padding: 3px 8px; text-align: left; font-size: 12px }
"""


def build_report(records: list[dict[str, Any]], *, title: str = "Similarity scores",
                 source: str = "", top: int = 24, max_errors: int = 200) -> str:
    """The report page for the records of an output file (see :func:`output.read_records`)."""
    distances = distances_of(records)
    stats = DistanceStats.of(distances)
    errors = [r for r in records if r.get("error")]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>",
           f"<p>{len(records)} pair(s) from <code>{html.escape(source)}</code>, "
           f"generated {now}.</p>"]
    rows = [("scored", str(len(distances))), ("failed", str(len(errors)))]
    if stats is not None:
        rows += [(k, f"{getattr(stats, k):.4f}") for k in ("mean", "median", "p95", "min",
                                                            "max")]
    out.append('<table class="stats">' + "".join(
        f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>")
    if stats is not None:
        out.append("<h2>Distribution of distances</h2>")
        out.append(histogram_svg(distances, stats=stats))
        ranked = sorted((r for r in records if not r.get("error")
                         and isinstance(r.get("distance"), int | float)
                         and math.isfinite(r["distance"])),
                        key=lambda r: -float(r["distance"]))[:top]
        out.append(f"<h2>The {len(ranked)} pair(s) with the largest distances</h2>")
        out.append('<div class="grid">')
        for rank, r in enumerate(ranked, start=1):
            out.append(
                f'<div class="card" data-pair-id="{html.escape(str(r["pair_id"]))}">'
                f'<div class="score">#{rank} pair {html.escape(str(r["pair_id"]))}: '
                f'distance {float(r["distance"]):.4f}, similarity '
                f'{float(r.get("similarity") or 0):.4f}</div><div class="pair">'
                f'{_side(str(r.get("reference", "")), "reference")}'
                f'{_side(str(r.get("generated", "")), "generated")}</div></div>')
        out.append("</div>")
    if errors:
        reasons = Counter(f'{e.get("field") or ""}: {e["error"]}' for e in errors)
        out.append(f"<h2>Failed pairs ({len(errors)})</h2><ul>")
        out += [f"<li>{n} x {html.escape(reason)}</li>" for reason, n in reasons.most_common(10)]
        out.append('</ul><table class="errors"><tr><th>pair_id</th><th>field</th>'
                   "<th>reason</th><th>reference</th><th>generated</th></tr>")
        for e in errors[:max_errors]:
            out.append("<tr>" + "".join(
                f"<td>{html.escape(str(e.get(k) or ''))}</td>"
                for k in ("pair_id", "field", "error", "reference", "generated")) + "</tr>")
        out.append("</table>")
        if len(errors) > max_errors:
            out.append(f"<p>... and {len(errors) - max_errors} more in {html.escape(source)}</p>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(records: list[dict[str, Any]], path: Path, **kwargs: Any) -> None:
    """Write :func:`build_report`'s page to ``path`` (atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(build_report(records, **kwargs), encoding="utf-8")
    tmp.replace(path)
