"""The static HTML quality report of a label store (`mtpano report STORE --out DIR`).

DIR/index.html is one self-contained page: inline CSS, plots as inline SVG drawn here, a
little inline script (sortable tables; it marks `<body data-ready="1">` once the page and
its images have loaded, which the tests read), no server, no network, no external assets.
Beside it, DIR/thumbs/*.png hold small label thumbnails of the worst panoramas and
DIR/previews/*.png their full previews (`mtpano.preview`), which the thumbnails link to.

The page shows the store-wide summary, the mean / median / worst of every figure, the
distribution of every figure as a histogram (and the store's class shares), the worst
panoramas by the chosen figure, a table of the panoramas (worst first, up to a limit) and
the failed panoramas with their errors.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mtpano import __version__, inspection
from mtpano.preview import render_preview
from mtpano.visualize import colorize_depth, colorize_normals, colorize_semantic, write_rgb
from pipeline import quality
from pipeline.quality import DEFAULT_SORT, FIGURES
from storage import groundtruth
from storage.labelstore import STATUS_FAILED, STATUS_OK, LabelStore

THUMB_HEIGHT = 64  # each of the thumbnail's four panels is 2T x T
HIST_BINS = 20


@dataclass(frozen=True)
class ReportFiles:
    """What `write_report` wrote."""

    index: Path
    thumbnails: list[Path]
    previews: list[Path]


def slug(index: int, pano_id: str) -> str:
    """A file name stem for a panorama, unique in its store and safe on any filesystem."""
    return f"{index:06d}-" + re.sub(r"[^A-Za-z0-9._-]+", "_", pano_id)[-80:]


def fit_panel(rgb: np.ndarray, height: int, nearest: bool) -> np.ndarray:
    """(h,w,3) uint8 image resized to (height, 2 height, 3): nearest for label maps (no mixed
    classes or colours), area averaging for photos."""
    return cv2.resize(rgb, (2 * height, height), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def thumbnail(arrays: Mapping[str, np.ndarray], tasks: tuple[str, ...]) -> np.ndarray:
    """(2T,4T,3) uint8: the panorama, depth, semantic and normals, two by two (black where a task is absent)."""
    blank = np.zeros((THUMB_HEIGHT, 2 * THUMB_HEIGHT, 3), np.uint8)
    rgb = np.ascontiguousarray(arrays["rgb"].transpose(1, 2, 0))  # (3,H,W) -> (H,W,3)
    colorize = {
        "depth": lambda a: colorize_depth(a.astype(np.float32)),
        "semantic": colorize_semantic,
        "normals": lambda a: colorize_normals(a.astype(np.float32)),
    }
    panels = [fit_panel(rgb, THUMB_HEIGHT, nearest=False)]
    for task, draw in colorize.items():
        panels.append(fit_panel(draw(arrays[task]), THUMB_HEIGHT, nearest=True) if task in tasks else blank)
    return np.concatenate((np.concatenate(panels[:2], 1), np.concatenate(panels[2:], 1)), 0)


# ---------------------------------------------------------------------- SVG plots
def _svg_number(value: float) -> str:
    return f"{value:.3g}"


def svg_open(width: int, height: int, label: str) -> str:
    """The opening tag of an inline SVG plot of `width` x `height` CSS pixels, `label` its
    accessible name (escaped here)."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(label)}">'
    )


def histogram_svg(values: list[float], figure: quality.Figure, width: int = 300, height: int = 150) -> str:
    """An inline SVG histogram of a figure's finite values, with its mean marked."""
    left, right, top, bottom = 34, 10, 10, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    data = np.asarray(values, dtype=np.float64)
    lo, hi = float(data.min()), float(data.max())
    constant = hi - lo <= 1e-12 * max(1.0, abs(hi))
    if constant:  # one bar in the middle, labelled with the value
        counts = np.zeros(HIST_BINS, np.int64)
        counts[HIST_BINS // 2] = data.size
        edges = np.full(HIST_BINS + 1, lo)
    else:
        counts, edges = np.histogram(data, bins=HIST_BINS, range=(lo, hi))
    top_count = max(int(counts.max()), 1)
    parts = [
        svg_open(width, height, f"histogram of {figure.name}"),
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" class="axis"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" class="axis"/>',
    ]
    bar_w = plot_w / HIST_BINS
    for k, c in enumerate(counts):
        if c == 0:
            continue
        h = plot_h * c / top_count
        parts.append(
            f'<rect x="{left + k * bar_w + 0.5:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 1:.1f}" '
            f'height="{h:.1f}" class="bar"><title>{_svg_number(edges[k])} to {_svg_number(edges[k + 1])}: '
            f"{c}</title></rect>"
        )
    mean = float(data.mean())
    mx = left + (plot_w * (HIST_BINS // 2 + 0.5) / HIST_BINS if constant else plot_w * (mean - lo) / (hi - lo))
    parts.append(f'<line x1="{mx:.1f}" y1="{top}" x2="{mx:.1f}" y2="{top + plot_h}" class="mean"/>')
    if constant:
        parts.append(
            f'<text x="{mx:.1f}" y="{height - 18}" class="tick" text-anchor="middle">'
            f"{html.escape(figure.format(lo))} (all)</text>"
        )
    else:
        parts += [
            f'<text x="{left}" y="{height - 18}" class="tick">{html.escape(figure.format(lo))}</text>',
            f'<text x="{left + plot_w}" y="{height - 18}" class="tick" text-anchor="end">'
            f"{html.escape(figure.format(hi))}</text>",
        ]
    parts += [
        f'<text x="{left - 4}" y="{top + 8}" class="tick" text-anchor="end">{top_count}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" class="tick" text-anchor="end">0</text>',
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" class="tick" text-anchor="middle">'
        f"{'worse &#8594;' if figure.worse == 'high' else '&#8592; worse'}</text>",
        "</svg>",
    ]
    return "".join(parts)


def class_share_svg(names: list[str], shares: list[float], width: int = 620) -> str:
    """An inline SVG bar chart of class shares (largest first)."""
    row, left = 18, 150
    height = row * len(names) + 10
    top = max(shares) if shares else 1.0
    parts = [svg_open(width, height, "class shares")]
    for k, (name, share) in enumerate(zip(names, shares, strict=True)):
        y = 5 + k * row
        w = (width - left - 60) * share / max(top, 1e-12)
        parts += [
            f'<text x="{left - 6}" y="{y + 12}" class="tick" text-anchor="end">{html.escape(name)}</text>',
            f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{row - 5}" class="bar"/>',
            f'<text x="{left + w + 4:.1f}" y="{y + 12}" class="tick">{share:.1%}</text>',
        ]
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------------- page
# The style and script every report page shares (`html_page`).
PAGE_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1d1f21;
       background: #fafafa; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; font-size: 1.2em; }
.summary { font-size: 0.95em; background: #fff; border: 1px solid #ddd; padding: 8px 12px; border-radius: 6px; }
table { border-collapse: collapse; font-size: 0.85em; background: #fff; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
td { white-space: nowrap; } td.text { white-space: normal; }
th { background: #eef1f4; cursor: pointer; position: sticky; top: 0; }
td.id, th.id, td.text { text-align: left; }
tr.failed td { color: #a00; }
.grid { display: flex; flex-wrap: wrap; gap: 14px; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; width: 300px; }
.card h3 { font-size: 0.9em; margin: 0 0 2px 0; font-family: monospace; }
.card p { font-size: 0.8em; margin: 0 0 4px 0; color: #555; }
.thumb { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 6px; font-size: 0.8em; width: 256px; }
.thumb img { display: block; width: 256px; height: 128px; image-rendering: pixelated; }
svg .bar { fill: #4a7ab5; } svg .axis { stroke: #888; } svg .mean { stroke: #d33; stroke-dasharray: 3 2; }
svg .tick { font-size: 10px; fill: #444; }
.scroll { overflow-x: auto; max-width: 100%; }
"""

PAGE_SCRIPT = """
(function () {
  function key(cell) {
    var v = cell.getAttribute("data-v");
    if (v === null) { return cell.textContent; }
    return v === "" ? NaN : parseFloat(v);
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th").forEach(function (th, col) {
      th.addEventListener("click", function () {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var up = th.getAttribute("data-up") !== "1";
        th.setAttribute("data-up", up ? "1" : "0");
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (typeof x === "number" || typeof y === "number") {
            if (isNaN(x)) { return 1; } if (isNaN(y)) { return -1; }
            return up ? x - y : y - x;
          }
          return up ? String(x).localeCompare(String(y)) : String(y).localeCompare(String(x));
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  window.addEventListener("load", function () {
    var images = Array.prototype.slice.call(document.images);
    var broken = images.filter(function (im) { return !(im.complete && im.naturalWidth > 0); });
    document.body.setAttribute("data-images", String(images.length));
    document.body.setAttribute("data-broken-images", String(broken.length));
    document.body.setAttribute("data-ready", "1");
  });
})();
"""


def html_page(title: str, body: str, extra_css: str = "") -> str:
    """A complete self-contained report page: `body` (HTML) under the shared style (plus
    `extra_css`), then the shared script (sortable tables; `<body data-ready="1">` once the
    page and its images have loaded, with `data-images` and `data-broken-images` counts)."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="mtpano {__version__}">
<title>{html.escape(title)}</title>
<style>{PAGE_CSS}{extra_css}</style>
</head>
<body data-ready="0">
{body}
<script>{PAGE_SCRIPT}</script>
</body>
</html>
"""


def facts_table(items: list[tuple[str, str]]) -> str:
    """A two-column table of (name, text) rows, the text escaped here."""
    rows = "".join(f'<tr><th class="id">{k}</th><td class="text">{html.escape(str(v))}</td></tr>' for k, v in items)
    return f'<table class="facts">{rows}</table>'


def _cell(figure: quality.Figure, value: Any) -> str:
    v = "" if not inspection.is_finite(value) else repr(float(value))
    return f'<td data-v="{v}">{html.escape(figure.format(value))}</td>'


def _facts_html(facts: Mapping[str, Any]) -> str:
    w, h = facts["label_size"]
    fov = ", ".join(f"{f:g}°" for f in facts["fov_deg"][:4]) + (" ..." if len(facts["fov_deg"]) > 4 else "")
    items = [
        ("store", facts["store"]),
        ("panoramas", f"{facts['panoramas']} ({facts['ok']} ok, {facts['failed']} failed, {facts['pending']} pending)"),
        ("kind", inspection.describe_kind(facts["kind"], facts["source"])),
    ]
    if facts["layout"]:
        items += [
            ("teachers", ", ".join(f"{t}: {n}" for t, n in facts["teachers"].items())),
            ("layout", f"{facts['layout']}: {facts['patches']} patches of {facts['patch_size']} px, FoV {fov}"),
        ]
    items += [
        ("labels", f"{w} x {h}" + (f", depth {facts['depth_kind']}" if facts["depth_kind"] else "")),
    ]
    return facts_table(items)


def _figure_stats_html(rows: list[Mapping[str, Any]], names: list[str]) -> str:
    body = []
    for name in names:
        f = FIGURES[name]
        values = np.array(inspection.ok_values(rows, name))
        if not values.size:
            continue
        worst = values.max() if f.worse == "high" else values.min()
        body.append(
            f'<tr><td class="id"><code>{name}</code></td>{_cell(f, values.mean())}{_cell(f, np.median(values))}'
            f'{_cell(f, worst)}<td data-v="{values.size}">{values.size}</td>'
            f'<td class="text">{html.escape(f.description)}</td></tr>'
        )
    head = "".join(f"<th>{h}</th>" for h in ("mean", "median", "worst", "n"))
    head = f"<tr><th class='id'>figure</th>{head}<th class='id'>meaning</th></tr>"
    return f'<table class="sortable" id="figures"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _histograms_html(rows: list[Mapping[str, Any]], names: list[str]) -> str:
    ok = [r for r in rows if r["status"] == STATUS_OK]
    cards = []
    for name in names:
        f = FIGURES[name]
        values = inspection.ok_values(ok, name)
        if not values:
            continue
        missing = len(ok) - len(values)
        note = f" ({missing} without a value)" if missing else ""
        cards.append(
            f'<div class="card" data-figure="{name}"><h3>{name}</h3><p>{html.escape(f.description)}; '
            f"n = {len(values)}{note}</p>{histogram_svg(values, f)}</div>"
        )
    return f'<div class="grid" id="distributions">{"".join(cards)}</div>'


def _class_shares_html(store: LabelStore, rows: list[Mapping[str, Any]], count: int = 15) -> str:
    hists = [r["semantic_histogram"] for r in rows if r["status"] == STATUS_OK and r.get("semantic_histogram")]
    if not hists:
        return ""
    mean = np.mean(np.asarray(hists, dtype=np.float64), axis=0)
    order = [int(i) for i in np.argsort(mean)[::-1][:count] if mean[i] > 0]
    names = [store.spec.class_names[i] for i in order]
    svg = class_share_svg(names, [float(mean[i]) for i in order])
    return f"<h2>Class shares (mean over panoramas, top {len(order)})</h2>{svg}"


def write_report(
    store: LabelStore,
    out: Path,
    sort: str = DEFAULT_SORT,
    worst: int = 12,
    gt_dir: Path | None = None,
    recompute: bool = False,
    table_limit: int = 1000,
    panel_height: int = 256,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> ReportFiles:
    """Write the report of `store` into the folder `out` (see the module doc).

    Args:
        sort: the figure that ranks the panoramas (worst first).
        worst: how many of the worst panoramas get a thumbnail and a preview.
        gt_dir: ground truth (`mtpano synth`'s gt/ format): adds the GT metrics and error maps.
        recompute: recompute the figures the arrays determine instead of reading the manifest.
        table_limit: most panoramas in the page's table (the worst ones).
        on_progress: called with (stage, done, total).
    """
    if sort not in FIGURES:
        raise KeyError(sort)

    def progress(stage: str) -> Callable[[int, int], None] | None:
        return None if on_progress is None else (lambda done, total: on_progress(stage, done, total))

    rows = inspection.load_figures(store, recompute, gt_dir, progress("reading arrays"))
    ranked = inspection.sort_rows(rows, sort)
    chosen = [r for r in ranked if r["status"] == STATUS_OK and inspection.is_finite(r.get(sort))][:worst]
    out = Path(out)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    (out / "previews").mkdir(parents=True, exist_ok=True)
    seams = inspection.store_seams(store.spec) if chosen else None
    thumbs, previews = [], []
    for done, row in enumerate(chosen, 1):
        arrays = store.read(int(row["index"]), ["rgb", *inspection.label_arrays(store.spec)])
        files = groundtruth.ground_truth_files(gt_dir, row["pano_id"]) if gt_dir is not None else {}
        gt = groundtruth.read_ground_truth(files, store.spec.erp_height) if files else None
        name = slug(int(row["index"]), row["pano_id"])
        write_rgb(out / "thumbs" / f"{name}.png", thumbnail(arrays, store.spec.tasks))
        image, _ = render_preview(store.spec, row, arrays, seams, gt, panel_height)
        write_rgb(out / "previews" / f"{name}.png", image)
        thumbs.append(out / "thumbs" / f"{name}.png")
        previews.append(out / "previews" / f"{name}.png")
        if on_progress is not None:
            on_progress("rendering previews", done, len(chosen))
    page = _page(store, rows, ranked, chosen, sort, table_limit)
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return ReportFiles(index, thumbs, previews)


def _page(
    store: LabelStore,
    rows: list[dict[str, Any]],
    ranked: list[dict[str, Any]],
    chosen: list[dict[str, Any]],
    sort: str,
    table_limit: int,
) -> str:
    facts = inspection.summary(store, rows)
    names = inspection.present_figures(rows)
    columns = inspection.default_columns(store.spec, rows)
    if sort not in columns:
        columns = [sort, *columns]
    sort_figure = FIGURES[sort]
    with_preview = {int(r["index"]) for r in chosen}

    thumbs = []
    for r in chosen:
        name = slug(int(r["index"]), r["pano_id"])
        thumbs.append(
            f'<div class="thumb"><a href="previews/{name}.png"><img src="thumbs/{name}.png" '
            f'alt="{html.escape(r["pano_id"])}" width="256" height="128"></a>'
            f"<div><code>{html.escape(r['pano_id'])}</code><br>{html.escape(sort)} "
            f"{html.escape(sort_figure.format(r.get(sort)))}</div></div>"
        )
    shown = ranked[:table_limit]
    head = "".join(
        f'<th title="{html.escape(c)}: {html.escape(FIGURES[c].description)}" data-figure="{c}">'
        + (f"{FIGURES[c].task}<br>" if FIGURES[c].task != "all" else "")
        + f"{html.escape(FIGURES[c].header)}</th>"
        for c in columns
    )
    body = []
    for r in shown:
        name = slug(int(r["index"]), r["pano_id"])
        label = html.escape(r["pano_id"])
        link = f'<a href="previews/{name}.png">{label}</a>' if int(r["index"]) in with_preview else label
        cls = ' class="failed"' if r["status"] == STATUS_FAILED else ""
        cells = "".join(_cell(FIGURES[c], r.get(c)) for c in columns)
        body.append(f'<tr{cls}><td class="id">{link}</td><td class="text">{r["status"]}</td>{cells}</tr>')
    failed = [r for r in rows if r["status"] == STATUS_FAILED]
    failed_html = (
        "<h2>Failed panoramas</h2><ul>"
        + "".join(f"<li><code>{html.escape(r['pano_id'])}</code>: {html.escape(str(r['error']))}</li>" for r in failed)
        + "</ul>"
        if failed
        else ""
    )
    limit_note = f" (the {len(shown)} worst of {len(ranked)})" if len(shown) < len(ranked) else ""
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    body = f"""<h1>Label quality report</h1>
<p class="summary" id="summary">{html.escape(inspection.summary_line(facts))}</p>
{_facts_html(facts)}
<p>Generated {generated} by mtpano {__version__}. Figures are defined in docs/quality.md; click a column
header to sort a table.</p>
<h2>Figures (over the {facts["ok"]} ok panoramas)</h2>
{_figure_stats_html(rows, names)}
<h2>Distributions</h2>
<p>One histogram per figure; the dashed red line is the mean.</p>
{_histograms_html(rows, names)}
{_class_shares_html(store, rows)}
<h2>The {len(chosen)} worst panoramas by <code>{html.escape(sort)}</code></h2>
<p>Thumbnails: panorama, depth / semantic, normals. Click one for its full preview.</p>
<div class="grid" id="worst">{"".join(thumbs)}</div>
<h2>Panoramas by <code>{html.escape(sort)}</code>, worst first{limit_note}</h2>
<div class="scroll"><table class="sortable" id="panoramas">
<thead><tr><th class="id">pano_id</th><th class="id">status</th>{head}</tr></thead>
<tbody>{"".join(body)}</tbody></table></div>
{failed_html}"""
    return html_page(f"mtpano report: {store.url}", body)
