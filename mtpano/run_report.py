"""The static HTML report of a training run (`mtpano report RUN --out DIR`).

DIR/index.html is one self-contained page in the store report's style (`mtpano.report`:
inline CSS, plots drawn here as inline SVG, the shared little script, no server, no network,
no external assets). It shows:

- a summary: the run's preset, tasks, training settings, stores (role, kind, panoramas,
  tasks, label height), how far it got, the best checkpoint and its validation figures in
  every aggregation, and the notes of what was derived from the data;
- the loss curves per task: one plot per main task (its term, its `coarse_` head, any extra
  term such as `semantic_dice`), one for the total and one for the auxiliary terms, every
  term logged in metrics.jsonl a line; a logarithmic axis when a plot's values are positive
  and span a factor of `LOG_RATIO` or more;
- the validation figures over the steps, one plot per figure of the `pooled` aggregation,
  the best checkpoint's step marked;
- the learning rate (outside the encoder), samples/s and the share of time spent waiting
  for data;
- the worst validation panoramas by the run's best metric (or `sort`): the run's best model
  predicts every validation panorama of the run (the split is rebuilt from the stores named
  in train_config.json, exactly as `trainer.train.plan_run` made it), `Meter.update` scores
  each one, and the worst are drawn with their labels, predictions and error maps
  (DIR/worst/<slug>/<panel>.png, the previews' colour maps), followed by a sortable table of
  every validation panorama's figures.

The per-panorama figures are the trainer's: the same dataset items, `predictions` and
`Meter`, so their mean equals the `per_panorama` figures the run logged at the model's step.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from evaluation.metrics import FIGURE_NAMES, Meter, MetricConfig, depth_errors, depth_pairs, normal_angles
from mtpano import __version__
from mtpano.preview import DEPTH_ERROR_MAX, NORMAL_ERROR_MAX_DEG, colorize_error
from mtpano.report import facts_table, fit_panel, html_page, slug, svg_open
from mtpano.visualize import colorize_depth, colorize_normals, colorize_semantic, write_rgb
from spherical.ade20k import IGNORE_ID
from trainer.checkpoint import load_model, read_model_info
from trainer.config import BEST_METRICS
from trainer.data import (
    DataError,
    PanoramaDataset,
    Sample,
    StoreInfo,
    check_class_lists,
    limit_samples,
    open_store_info,
    split_samples,
    to_device,
)
from trainer.inference import predict
from trainer.runs import BEST, CONFIG_FILE, FINAL, RunFolder
from trainer.train import default_best_metric, meter_config

MAIN_TASKS = ("depth", "semantic", "normals")
LOG_RATIO = 10.0  # a plot of positive values spanning at least this factor gets a log axis
DOTS_UP_TO = 40  # points drawn as dots too when a series has at most this many
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
BEST_COLOR = "#d33"
# Per-panorama figures in the validation table (those of the run's tasks), besides the ranking one.
TABLE_FIGURES = (
    "depth_absrel",
    "depth_rmse",
    "depth_delta1",
    "semantic_miou",
    "semantic_pixel_accuracy",
    "normals_mean_deg",
    "normals_within_11_25",
)
# Semantic error panel colours (as the store previews): right class, wrong class; black = no label.
RIGHT_CLASS, WRONG_CLASS = (90, 90, 90), (230, 40, 40)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


class RunReportError(ValueError):
    """A run folder that cannot be drawn as asked (not a run, its stores unreadable, an
    unknown ranking figure)."""


def is_run_folder(path: str | Path) -> bool:
    """Whether `path` is a local training run folder (it holds train_config.json)."""
    return "://" not in str(path) and (Path(path) / CONFIG_FILE).is_file()


# ---------------------------------------------------------------------- figures
def higher_is_better(name: str) -> bool:
    """Whether a larger value of an evaluation figure (`evaluation.metrics.FIGURE_NAMES`) is better."""
    if name in BEST_METRICS:
        return not BEST_METRICS[name]
    return any(part in name for part in ("delta", "miou", "accuracy", "within"))


def is_share(name: str) -> bool:
    """Figures that are fractions in [0, 1] (shown as percentages)."""
    return any(part in name for part in ("delta", "miou", "accuracy", "within"))


def format_figure(name: str, value: Any) -> str:
    """An evaluation figure as the page shows it: shares in %, angles in degrees, else 4 digits."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    if is_share(name):
        return f"{value:.1%}"
    if name.endswith("_deg"):
        return f"{value:.2f}°"
    return f"{value:.4g}"


# ---------------------------------------------------------------------- the run's records
@dataclass(frozen=True)
class RunHistory:
    """What metrics.jsonl holds, by kind, in file order (steps increase: a resumed run's log
    is cut back to its checkpoint first)."""

    starts: list[dict[str, Any]]
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    end: dict[str, Any] | None


def read_history(run: RunFolder) -> RunHistory:
    """The records of a run's metrics.jsonl. Only a last line cut off by a kill (the run may
    still be writing) is left out; any other unreadable line is an error."""
    lines = run.metrics_file.read_text().splitlines() if run.metrics_file.is_file() else []
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                break
            raise RunReportError(f"{run.metrics_file}: line {number} is not JSON") from None
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_kind.setdefault(record.get("kind", ""), []).append(record)
    ends = by_kind.get("end", [])
    return RunHistory(
        starts=by_kind.get("start", []),
        train=by_kind.get("train", []),
        val=by_kind.get("val", []),
        skipped=by_kind.get("skipped", []),
        end=ends[-1] if ends else None,
    )


def loss_group(term: str) -> str:
    """The plot a loss term belongs to: "total", a main task (its term, its coarse head and
    terms named after it, e.g. semantic_dice) or "auxiliary" (gradient, edge_distance, points
    and their coarse heads)."""
    base = term.removeprefix("coarse_")
    if base == "total":
        return "total"
    for task in MAIN_TASKS:
        if base == task or base.startswith(f"{task}_"):
            return task
    return "auxiliary"


# ---------------------------------------------------------------------- line plots
@dataclass(frozen=True)
class Series:
    """One line of a plot: values at steps (NaN / inf values are gaps)."""

    name: str
    steps: tuple[int, ...]
    values: tuple[float, ...]


def use_log_scale(values: Sequence[float]) -> bool:
    """A log axis helps when the finite values are all positive and span a factor >= LOG_RATIO."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) >= LOG_RATIO


def _y_ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        decades = [10.0**k for k in range(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1)]
        return decades if len(decades) >= 2 else [lo, math.sqrt(lo * hi), hi]
    return [lo, (lo + hi) / 2, hi]


def tick_labels(ticks: Sequence[float], percent: bool = False) -> list[str]:
    """Labels of a plot's ticks with the fewest significant digits (2 to 6) that tell them apart."""
    for digits in range(2, 7):
        labels = [f"{100 * t:.{digits}g}%" if percent else f"{t:.{digits}g}" for t in ticks]
        if len(set(labels)) == len(labels):
            break
    return labels


def _value_text(value: float, percent: bool) -> str:
    return f"{value:.2%}" if percent else f"{value:.4g}"


def line_chart_svg(
    series: Sequence[Series],
    label: str,
    width: int = 400,
    height: int = 210,
    log: bool | None = None,
    percent: bool = False,
    zero_based: bool = False,
    best_step: int | None = None,
) -> str:
    """An inline SVG line plot of `series` against the step, line k in COLORS[k] (`legend_html`
    names them). Each series is one `<path class="series" data-series=NAME data-points=N>`
    whose `d` holds one M/L command per finite value (a gap starts a new M).

    Args:
        log: a log10 y axis; None decides by `use_log_scale` (non-positive values force linear).
        percent: values are shares, labelled in %.
        zero_based: the linear y axis starts at 0 (rates); it never goes below 0 when no
            value does.
        best_step: a step marked by a dashed vertical line, its points circled.
    """
    values = [v for s in series for v in s.values if math.isfinite(v)]
    steps = [x for s in series for x in s.steps]
    log = use_log_scale(values) if log is None else log and bool(values) and min(values) > 0
    left, right, top, bottom = 52, 12, 10, 22
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [svg_open(width, height, label)]
    if not values:
        parts.append(
            f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" class="tick" text-anchor="middle">no values</text>'
        )
        return "".join(parts) + "</svg>"
    x_lo, x_hi = min(steps), max(steps)
    if x_lo == x_hi:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    lo, hi = min(values), max(values)
    if zero_based and not log:
        lo = min(lo, 0.0)
    if log:
        y_lo, y_hi = math.log10(lo), math.log10(hi)
    else:
        pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi) * 0.1, 1e-3)
        y_lo, y_hi = lo - pad, hi + pad
        if lo >= 0:
            y_lo = max(y_lo, 0.0)
    if y_hi - y_lo < 1e-12:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5

    def px(step: float) -> float:
        return left + plot_w * (step - x_lo) / (x_hi - x_lo)

    def py(value: float) -> float:
        v = math.log10(value) if log else value
        return top + plot_h * (1.0 - (v - y_lo) / (y_hi - y_lo))

    ticks = _y_ticks(10**y_lo if log else y_lo, 10**y_hi if log else y_hi, log)
    for tick, text in zip(ticks, tick_labels(ticks, percent), strict=True):
        y = py(tick)
        parts += [
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" class="gridline"/>',
            f'<text x="{left - 4}" y="{y + 3:.1f}" class="tick" text-anchor="end">{html.escape(text)}</text>',
        ]
    parts += [
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" class="axis"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" class="axis"/>',
    ]
    for step in sorted({min(steps), max(steps)}):
        anchor = "start" if step == min(steps) and len(set(steps)) > 1 else "end"
        parts.append(
            f'<text x="{px(step):.1f}" y="{top + plot_h + 13}" class="tick" text-anchor="{anchor}">{step}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{top + plot_h + 13}" class="tick" text-anchor="middle">step</text>'
    )
    if best_step is not None:
        x = px(best_step)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" class="best">'
            f"<title>best checkpoint: step {best_step}</title></line>"
        )
    for k, s in enumerate(series):
        color = COLORS[k % len(COLORS)]
        commands, dots, pen_down = [], [], False
        for step, value in zip(s.steps, s.values, strict=True):
            if not math.isfinite(value) or (log and value <= 0):
                pen_down = False
                continue
            commands.append(f"{'L' if pen_down else 'M'}{px(step):.1f} {py(value):.1f}")
            pen_down = True
            marked = step == best_step
            if marked or len(s.steps) <= DOTS_UP_TO:
                kind = 'class="best-point" r="4"' if marked else 'r="2.2"'
                dots.append(
                    f'<circle cx="{px(step):.1f}" cy="{py(value):.1f}" {kind} fill="{BEST_COLOR if marked else color}">'
                    f"<title>{html.escape(s.name)} at step {step}: {_value_text(value, percent)}</title></circle>"
                )
        parts.append(
            f'<path d="{" ".join(commands)}" class="series" data-series="{html.escape(s.name)}" '
            f'data-points="{len(commands)}" stroke="{color}"/>'
        )
        parts += dots
    if log:
        parts.append(f'<text x="{left + plot_w}" y="{top + 8}" class="tick" text-anchor="end">log scale</text>')
    return "".join(parts) + "</svg>"


def legend_html(series: Sequence[Series]) -> str:
    """The names of a plot's lines in their colours (nothing for a single line)."""
    if len(series) < 2:
        return ""
    items = "".join(
        f'<span><i style="background: {COLORS[k % len(COLORS)]}"></i>{html.escape(s.name)}</span>'
        for k, s in enumerate(series)
    )
    return f'<div class="legend">{items}</div>'


def _chart_card(chart_id: str, title: str, note: str, svg: str, width: int, legend: str = "") -> str:
    return (
        f'<div class="card chart" data-chart="{html.escape(chart_id)}" style="width: {width}px">'
        f"<h3>{html.escape(title)}</h3><p>{html.escape(note)}</p>{svg}{legend}</div>"
    )


LOSS_SIZE = (400, 200)  # width, height of a loss plot
FIGURE_SIZE = (300, 170)  # of a validation figure's plot
RATE_SIZE = (360, 170)  # of the learning rate, samples/s and data-wait plots


def loss_charts_html(train: Sequence[Mapping[str, Any]]) -> str:
    """One plot per loss group (`loss_group`), every term of the group a line."""
    terms = sorted({name for r in train for name in r["loss"]})
    groups: dict[str, list[str]] = {}
    for term in terms:
        groups.setdefault(loss_group(term), []).append(term)
    steps = tuple(int(r["step"]) for r in train)
    cards = []
    for group in (g for g in ("total", *MAIN_TASKS, "auxiliary") if g in groups):
        series = [Series(t, steps, tuple(float(r["loss"].get(t, math.nan)) for r in train)) for t in groups[group]]
        values = [v for s in series for v in s.values]
        last = ", ".join(f"{s.name} {s.values[-1]:.4g}" for s in series if math.isfinite(s.values[-1]))
        note = f"last: {last}" + ("; log scale" if use_log_scale(values) else "")
        svg = line_chart_svg(series, f"loss: {group}", *LOSS_SIZE)
        cards.append(_chart_card(f"loss-{group}", f"loss: {group}", note, svg, LOSS_SIZE[0], legend_html(series)))
    return f'<div class="grid" id="losses">{"".join(cards)}</div>'


def validation_charts_html(val: Sequence[Mapping[str, Any]], best: Mapping[str, Any] | None) -> str:
    """One plot per figure of the `pooled` aggregation over the validations, the best step marked."""
    names = list(dict.fromkeys(name for r in val for name in r["figures"]["pooled"]))
    best_step = int(best["step"]) if best else None
    steps = tuple(int(r["step"]) for r in val)
    cards = []
    for name in names:
        values = tuple(float(r["figures"]["pooled"].get(name, math.nan)) for r in val)
        svg = line_chart_svg(
            [Series(name, steps, values)],
            f"validation {name}",
            *FIGURE_SIZE,
            percent=is_share(name),
            best_step=best_step,
        )
        direction = "higher is better" if higher_is_better(name) else "lower is better"
        at_best = next((v for step, v in zip(steps, values, strict=True) if step == best_step), math.nan)
        note = f"{direction}; best step {format_figure(name, at_best)}, last {format_figure(name, values[-1])}"
        cards.append(_chart_card(f"val-{name}", name, note, svg, FIGURE_SIZE[0]))
    return f'<div class="grid" id="validation">{"".join(cards)}</div>'


def throughput_charts_html(train: Sequence[Mapping[str, Any]]) -> str:
    """The learning rate, samples/s and the data-wait share over the steps."""
    steps = tuple(int(r["step"]) for r in train)
    lr = Series("lr", steps, tuple(float(r["lr"]) for r in train))
    rate = Series("samples/s", steps, tuple(float(r["samples_per_s"]) for r in train))
    wait = Series("data wait", steps, tuple(float(r["data_wait"]) for r in train))
    plots = [
        ("lr", "learning rate", "the peak group's rate (the encoder's is scaled by encoder_lr_scale)", lr, False),
        (
            "samples-per-s",
            "samples / s",
            f"panoramas per second, all workers; mean {np.mean(rate.values):.3g}",
            rate,
            False,
        ),
        (
            "data-wait",
            "data-wait share",
            f"share of the time spent waiting for data; mean {np.mean(wait.values):.1%}",
            wait,
            True,
        ),
    ]
    cards = [
        _chart_card(
            chart,
            title,
            note,
            line_chart_svg([s], title, *RATE_SIZE, log=False, percent=share, zero_based=True),
            RATE_SIZE[0],
        )
        for chart, title, note, s, share in plots
    ]
    return f'<div class="grid" id="throughput">{"".join(cards)}</div>'


# ---------------------------------------------------------------------- validation panoramas
def validation_samples(record: Mapping[str, Any]) -> tuple[list[StoreInfo], list[Sample]]:
    """The stores of a run (train_config.json's `record`, in its order) and its validation
    panoramas, as `trainer.train.plan_run` chose them: every panorama of the `val` stores
    when there are any, else the hash split of the training stores by `val_fraction`; then
    the run's `val_limit`. Raises DataError when a store cannot be opened."""
    entries = record["stores"]
    stores = [open_store_info(entry["url"]) for entry in entries]
    train_k = [k for k, e in enumerate(entries) if e["role"] == "train"]
    val_k = [k for k, e in enumerate(entries) if e["role"] == "val"]
    if val_k:
        val, _ = split_samples([stores[k] for k in val_k], 0.0)
        positions = val_k
    else:
        _, val = split_samples([stores[k] for k in train_k], float(record["train"]["val_fraction"]))
        positions = train_k
    val = [dataclasses.replace(s, store=positions[s.store]) for s in val]  # index into `stores`
    return stores, limit_samples(val, int(record["train"]["val_limit"]))


@torch.no_grad()
def score_panoramas(
    model: torch.nn.Module,
    dataset: PanoramaDataset,
    config: MetricConfig,
    batch_size: int,
    precision: str,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """`Meter.update`'s row of every item of `dataset` ({"pano_id", figure: value}, NaN where a
    panorama has no scored pixel of a task), in dataset order, plus "position" (the item's
    position) and "store" (its store's position), predicted by `model` as the trainer's
    validation does."""
    device = next(model.parameters()).device
    meter = Meter(config, device=device)
    rows: list[dict[str, Any]] = []
    loader = DataLoader(dataset, batch_size=batch_size)
    for batch in loader:
        batch = to_device(batch, device)
        found = meter.update(predict(model, batch["rgb"], precision), batch, batch["pano_id"])
        for row, store in zip(found, batch["store"].tolist(), strict=True):
            rows.append({**row, "position": len(rows), "store": int(store)})
        if on_progress is not None:
            on_progress(len(rows), len(dataset))
    return rows


def rank_rows(rows: Sequence[Mapping[str, Any]], metric: str) -> list[Mapping[str, Any]]:
    """The rows with a finite `metric`, worst first (ties by pano_id)."""
    finite = [r for r in rows if isinstance(r.get(metric), float) and math.isfinite(r[metric])]
    sign = 1.0 if higher_is_better(metric) else -1.0
    return sorted(finite, key=lambda r: (sign * r[metric], r["pano_id"]))


def _semantic_error(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8: grey where the class is right, red where wrong, black without a label."""
    image = np.zeros((*label.shape, 3), np.uint8)
    labelled = label != IGNORE_ID
    image[labelled & (pred == label)] = RIGHT_CLASS
    image[labelled & (pred != label)] = WRONG_CLASS
    return image


def comparison_panels(
    item: Mapping[str, Any], pred: Mapping[str, torch.Tensor], config: MetricConfig, panel_height: int
) -> dict[str, np.ndarray]:
    """The images of one panorama: "rgb", and per task "<task>_label", "<task>_prediction",
    "<task>_error", each (P,2P,3) uint8 at P = `panel_height`.

    Args:
        item: a `PanoramaDataset` item (labels at the training height, their masks).
        pred: `predictions` of that one panorama (no batch axis).
    Depth is drawn as range, both maps with the label's colour range (turbo, near = red), as
    the metrics compare them (`depth_pairs`: a relative label fitted to the prediction), its
    error |d - d*| / d* (inferno, 0 to DEPTH_ERROR_MAX); normals' error is the angle (inferno,
    0 to NORMAL_ERROR_MAX_DEG); semantic's is grey (right) / red (wrong). Black: no label.
    """
    rgb = np.round(item["rgb"].permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)  # (3,H,W) -> (H,W,3)
    panels = {"rgb": fit_panel(rgb, panel_height, nearest=False)}
    if "depth" in config.tasks and "depth" in pred:
        metric = item["depth_metric"].reshape(1).to(pred["depth"].device)  # () -> (1,)
        d, d_true, scored = depth_pairs(
            pred["depth"][None], item["depth"][None], item["depth_mask"][None], config, True, metric
        )
        d, d_true, scored = d[0].cpu().numpy(), d_true[0].cpu().numpy(), scored[0].cpu().numpy()
        shown = np.where(scored, d_true, np.nan)
        reference = shown[scored] if scored.any() else d[np.isfinite(d)]
        lo, hi = np.percentile(reference, [2, 98]) if reference.size else (0.0, 1.0)
        hi = max(float(hi), float(lo) + 1e-6)
        absrel = depth_errors(torch.from_numpy(d), torch.from_numpy(d_true))["absrel"].numpy()
        panels["depth_label"] = colorize_depth(shown, lo, hi)
        panels["depth_prediction"] = colorize_depth(d, lo, hi)
        panels["depth_error"] = colorize_error(np.where(scored, absrel, np.nan), DEPTH_ERROR_MAX)
    if "semantic" in config.tasks and "semantic" in pred:
        label = item["semantic"].cpu().numpy()
        ids = pred["semantic"].cpu().numpy()
        panels["semantic_label"] = colorize_semantic(label)
        panels["semantic_prediction"] = colorize_semantic(ids)
        panels["semantic_error"] = _semantic_error(ids, label)
    if "normals" in config.tasks and "normals" in pred:
        mask = item["normals_mask"].cpu().numpy()
        label = np.where(mask[None], item["normals"].cpu().numpy(), np.nan)
        angles = normal_angles(pred["normals"].cpu(), item["normals"].cpu(), dim=0).numpy()
        panels["normals_label"] = colorize_normals(label)
        panels["normals_prediction"] = colorize_normals(pred["normals"].cpu().numpy())
        panels["normals_error"] = colorize_error(np.where(mask, angles, np.nan), NORMAL_ERROR_MAX_DEG)
    for name in panels:
        if name != "rgb":
            panels[name] = fit_panel(panels[name], panel_height, nearest=True)
    return panels


# ---------------------------------------------------------------------- the report
@dataclass(frozen=True)
class RunReportFiles:
    """What `write_run_report` wrote and found."""

    index: Path
    images: list[Path]  # the worst panoramas' panels
    metric: str  # the figure that ranked the validation panoramas
    model: Path | None  # the saved model that predicted them (None: none was scored)
    model_step: int | None
    rows: list[dict[str, Any]]  # every validation panorama's figures, in validation order
    worst: list[dict[str, Any]]  # the worst rows, worst first
    train_records: int
    val_records: int


def _model_folder(run: RunFolder) -> Path | None:
    """best/, else final/, else the last complete checkpoint; None before any was written."""
    for folder in (run.path / BEST, run.path / FINAL):
        if folder.is_dir():
            return folder
    return run.latest_checkpoint()


def _ranking_metric(sort: str | None, tasks: Sequence[str], best: Mapping[str, Any] | None, record: Mapping) -> str:
    known = [name for task in tasks if task in FIGURE_NAMES for name in FIGURE_NAMES[task]]
    if sort is not None:
        if sort not in known:
            raise RunReportError(f"unknown figure {sort!r} for this run; figures: {', '.join(known)}")
        return sort
    if best is not None and best.get("metric") in known:
        return str(best["metric"])
    configured = record["train"].get("best_metric")
    return configured if configured in known else default_best_metric(tasks)


def write_run_report(
    run_dir: Path | str,
    out: Path | str,
    sort: str | None = None,
    worst: int = 12,
    table_limit: int = 1000,
    panel_height: int = 128,
    on_progress: Progress | None = None,
    device: str | None = None,
) -> RunReportFiles:
    """Write the report of the training run in `run_dir` into the folder `out` (module doc).

    Args:
        sort: the per-panorama figure that ranks the validation panoramas, worst first
            (default: the run's best metric, as best.json names it).
        worst: how many of the worst validation panoramas are drawn; 0 reads no store and
            runs no model (the curves and the summary only).
        table_limit: most validation panoramas in the page's table (the worst).
        panel_height: P, the height of each drawn panel (its width is 2P).
        on_progress: called with (stage, done, total).
        device: torch device of the predictions (default: CUDA when available, else CPU).
    Raises RunReportError: not a run folder, an unknown `sort` figure, or (with `worst` > 0)
    a store of the run that cannot be opened.
    """
    run = RunFolder(Path(run_dir))
    if not is_run_folder(run.path):
        raise RunReportError(f"{run.path} is not a training run folder (no {CONFIG_FILE})")
    record = run.record()
    history = read_history(run)
    tasks = tuple(record["tasks"])
    best = run.best() or (history.val[-1].get("best") if history.val else None)
    if best is not None and best.get("metric") == "final":  # a run without validation
        best = None
    metric = _ranking_metric(sort, tasks, best, record)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    chosen: list[dict[str, Any]] = []
    images: list[Path] = []
    notes: list[str] = []
    model_dir = _model_folder(run) if worst > 0 else None
    model_step = None
    stores: list[StoreInfo] = []
    if model_dir is not None:
        try:
            stores, samples = validation_samples(record)
        except DataError as err:
            raise RunReportError(
                f"cannot read the run's validation panoramas: {err} (pass --worst 0 to draw the run without them)"
            ) from None
        notes += _store_changes(record, stores)
        if samples:
            rows, chosen, images, model_step = _draw_worst(
                record, stores, samples, model_dir, metric, worst, out, panel_height, on_progress, device
            )
    page = _page(run, record, history, best, metric, rows, chosen, model_dir, model_step, notes, table_limit)
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return RunReportFiles(
        index, images, metric, model_dir, model_step, rows, chosen, len(history.train), len(history.val)
    )


def _store_changes(record: Mapping[str, Any], stores: Sequence[StoreInfo]) -> list[str]:
    """Notes on stores that changed since the run read them (the split may then differ)."""
    notes = []
    for entry, store in zip(record["stores"], stores, strict=True):
        if store.spec_hash != entry["spec_hash"]:
            notes.append(f"{entry['url']} was relabelled since the run (its spec hash changed)")
        if len(store.panoramas) != int(entry["panoramas"]):
            notes.append(
                f"{entry['url']} now has {len(store.panoramas)} ok panoramas, the run read {entry['panoramas']}: "
                "the validation panoramas may differ from the run's"
            )
    return notes


def _draw_worst(
    record: Mapping[str, Any],
    stores: list[StoreInfo],
    samples: list[Sample],
    model_dir: Path,
    metric: str,
    worst: int,
    out: Path,
    panel_height: int,
    on_progress: Progress | None,
    device: str | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Path], int]:
    """Score every validation panorama with the saved model, draw the `worst` worst."""
    train = record["train"]
    tasks = tuple(record["tasks"])
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, step = load_model(model_dir)
    model.to(target).eval()
    info = read_model_info(model_dir)
    class_names = tuple(info.get("class_names") or check_class_lists(stores))
    config = meter_config(tasks, class_names)
    dataset = PanoramaDataset(stores, samples, int(train["height"]), tasks)
    micro_batch = max(1, int(train["batch_size"]) // int(train["grad_accum"]))
    stage = "predicting validation panoramas"
    progress = None if on_progress is None else (lambda done, total: on_progress(stage, done, total))
    rows = score_panoramas(model, dataset, config, micro_batch, train["precision"], progress)
    chosen = [dict(r) for r in rank_rows(rows, metric)[:worst]]
    worst_dir = out / "worst"
    images = []
    for rank, row in enumerate(chosen):
        item = dataset[row["position"]]
        rgb = item["rgb"][None].to(target)  # (3,H,W) -> (1,3,H,W)
        pred = {k: v[0] for k, v in predict(model, rgb, train["precision"]).items()}  # drop the batch axis
        item = {k: (v.to(target) if isinstance(v, torch.Tensor) else v) for k, v in item.items()}
        folder = worst_dir / slug(rank, row["pano_id"])
        folder.mkdir(parents=True, exist_ok=True)
        row["folder"] = folder.relative_to(out).as_posix()
        row["panels"] = []
        for name, image in comparison_panels(item, pred, config, panel_height).items():
            write_rgb(folder / f"{name}.png", image)
            images.append(folder / f"{name}.png")
            row["panels"].append(name)
        if on_progress is not None:
            on_progress("drawing the worst panoramas", rank + 1, len(chosen))
    return rows, chosen, images, step


# ---------------------------------------------------------------------- page
_EXTRA_CSS = """
.legend { font-size: 0.75em; color: #444; } .legend span { display: inline-block; margin-right: 10px; }
.legend i { display: inline-block; width: 14px; height: 3px; vertical-align: middle; margin-right: 4px; }
svg .series { fill: none; stroke-width: 2; stroke-linejoin: round; }
svg .gridline { stroke: #e3e3e3; } svg .best { stroke: #d33; stroke-dasharray: 4 3; stroke-width: 1.5; }
.pano { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; margin-bottom: 14px; }
.pano h3 { font-size: 0.95em; margin: 0 0 4px 0; }
.pano p { font-size: 0.85em; margin: 2px 0 6px 0; color: #444; }
table.compare { background: none; } table.compare td, table.compare th { border: none; padding: 2px 4px; }
table.compare th { background: none; cursor: default; position: static; text-align: left; }
table.compare img { display: block; width: 256px; height: 128px; image-rendering: pixelated; }
ul.notes { font-size: 0.9em; }
"""
_ERROR_LEGEND = (
    f"error: depth |d - d*| / d* from 0 (black) to {DEPTH_ERROR_MAX:g} (yellow); normals the angle from 0 to "
    f"{NORMAL_ERROR_MAX_DEG:g}°; semantic grey = right class, red = wrong; black = no label"
)


def _summary_items(
    run: RunFolder, record: Mapping[str, Any], history: RunHistory, best: Mapping[str, Any] | None
) -> list[tuple[str, str]]:
    train = record["train"]
    last_step = max([int(r["step"]) for r in history.train + history.val] or [0])
    if history.end is not None and int(history.end["step"]) >= int(train["steps"]):
        status = f"finished: {train['steps']} steps"
    else:
        status = f"at step {last_step} of {train['steps']} (not finished, or still running)"
    overrides = ", ".join(f"{k}={v}" for k, v in train["model"].items())
    start = history.starts[-1] if history.starts else {}
    items = [
        ("run", str(run.path)),
        ("status", status),
        ("preset", train["preset"] + (f" (model overrides: {overrides})" if overrides else "")),
        ("tasks", ", ".join(record["tasks"])),
        (
            "training",
            f"{2 * int(train['height'])}x{train['height']}, batch {train['batch_size']}"
            + (f" ({train['grad_accum']} accumulation steps)" if int(train["grad_accum"]) > 1 else "")
            + f", peak lr {train['lr']:g} (encoder x{train['encoder_lr_scale']:g}), {train['schedule']} after "
            f"{train['warmup_steps']} warm-up steps, precision {train['precision']}, seed {train['seed']}",
        ),
        ("panoramas", f"{record['train_panoramas']} training, {record['val_panoramas']} validation"),
    ]
    if start:
        items.append(("workers", f"{start['workers']} on {start['device']}" + _resumes(len(history.starts) - 1)))
    if history.skipped:
        last = history.skipped[-1]
        items.append(("unreadable", f"{last['unreadable']} of {last['read']} panoramas read were skipped"))
    if best is not None:
        items.append(
            (
                "best checkpoint",
                f"step {best['step']}: {best['metric']} {format_figure(best['metric'], best['value'])} (best/)",
            )
        )
    else:
        items.append(("best checkpoint", "none chosen by validation yet"))
    items.append(("mtpano", str(record.get("mtpano_version", "?"))))
    return items


def _resumes(count: int) -> str:
    return "" if count == 0 else f"; resumed {count} time{'s' if count > 1 else ''}"


def _stores_html(record: Mapping[str, Any]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("role", "kind", "panoramas", "tasks", "depth kind", "labels"))
    body = []
    for entry in record["stores"]:
        height = int(entry["height"])
        body.append(
            f'<tr><td class="id"><code>{html.escape(entry["url"])}</code></td><td class="text">{entry["role"]}</td>'
            f'<td class="text">{html.escape(str(entry["kind"]))}</td><td data-v="{entry["panoramas"]}">'
            f'{entry["panoramas"]}</td><td class="text">{html.escape(", ".join(entry["tasks"]))}</td>'
            f'<td class="text">{html.escape(str(entry["depth_kind"] or "-"))}</td><td>{2 * height}x{height}</td></tr>'
        )
    return (
        f'<table class="sortable" id="stores"><thead><tr><th class="id">store</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _best_figures_html(history: RunHistory, best: Mapping[str, Any] | None) -> str:
    if best is None:
        return ""
    record = next((r for r in history.val if int(r["step"]) == int(best["step"])), None)
    if record is None:
        return ""
    aggregations = list(record["figures"])
    head = "".join(f"<th>{html.escape(a)}</th>" for a in aggregations)
    body = []
    for name in record["figures"]["pooled"]:
        values = [record["figures"][a].get(name, math.nan) for a in aggregations]
        cells = "".join(f'<td data-v="{v if math.isfinite(v) else ""}">{format_figure(name, v)}</td>' for v in values)
        mark = ' class="best-row"' if name == best["metric"] else ""
        body.append(f'<tr{mark}><td class="id"><code>{name}</code></td>{cells}</tr>')
    counts = ", ".join(f"{t} {n}" for t, n in record.get("panoramas", {}).items())
    return (
        f"<h2>Validation figures of the best checkpoint (step {best['step']})</h2>"
        f"<p>Panoramas scored per task: {html.escape(counts)}. Aggregations: docs/evaluation.md.</p>"
        f'<table class="sortable" id="best-figures"><thead><tr><th class="id">figure</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _worst_html(
    chosen: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    tasks: Sequence[str],
    record: Mapping[str, Any],
) -> str:
    cards = []
    urls = [e["url"] for e in record["stores"]]
    for rank, row in enumerate(chosen, 1):
        folder = html.escape(row["folder"])
        figures = " · ".join(
            f"{name} {format_figure(name, row[name])}"
            for name in dict.fromkeys((metric, *TABLE_FIGURES))
            if name in row
        )
        lines = [
            f'<tr><th>panorama</th><td colspan="3"><a href="{folder}/rgb.png"><img src="{folder}/rgb.png" '
            f'alt="{html.escape(row["pano_id"])}" width="256" height="128"></a></td></tr>',
            "<tr><th></th><th>label</th><th>prediction</th><th>error</th></tr>",
        ]
        for task in tasks:
            if f"{task}_label" not in row["panels"]:
                continue
            images = "".join(
                f'<td><a href="{folder}/{task}_{kind}.png"><img src="{folder}/{task}_{kind}.png" '
                f'alt="{task} {kind}" width="256" height="128" data-panel="{task}_{kind}"></a></td>'
                for kind in ("label", "prediction", "error")
            )
            lines.append(f"<tr><th>{task}</th>{images}</tr>")
        cards.append(
            f'<div class="pano" data-pano="{html.escape(row["pano_id"])}">'
            f"<h3>{rank}. <code>{html.escape(row['pano_id'])}</code> · {html.escape(metric)} "
            f"{format_figure(metric, row[metric])}</h3>"
            f"<p>{html.escape(figures)} · store <code>{html.escape(urls[row['store']])}</code></p>"
            f'<table class="compare">{"".join(lines)}</table></div>'
        )
    return f'<div id="worst">{"".join(cards)}</div>'


def _panorama_table_html(
    rows: Sequence[Mapping[str, Any]], metric: str, table_limit: int, record: Mapping[str, Any]
) -> str:
    ranked = rank_rows(rows, metric)
    positions = {r["position"] for r in ranked}
    rest = [r for r in rows if r["position"] not in positions]  # no value of the metric: last
    shown = (ranked + rest)[:table_limit]
    present = {name for r in rows for name in r}
    columns = [metric, *(n for n in TABLE_FIGURES if n != metric and n in present)]
    head = "".join(f'<th data-figure="{c}">{html.escape(c)}</th>' for c in columns)
    urls = [e["url"] for e in record["stores"]]
    body = []
    for r in shown:
        cells = "".join(
            f'<td data-v="{r[c] if math.isfinite(r.get(c, math.nan)) else ""}">{format_figure(c, r.get(c))}</td>'
            for c in columns
        )
        body.append(
            f'<tr><td class="id">{html.escape(r["pano_id"])}</td><td class="text">{html.escape(urls[r["store"]])}'
            f"</td>{cells}</tr>"
        )
    note = f" (the {len(shown)} worst of {len(rows)})" if len(shown) < len(rows) else ""
    return (
        f"<h2>Validation panoramas by <code>{html.escape(metric)}</code>, worst first{note}</h2>"
        f'<div class="scroll"><table class="sortable" id="val-panoramas"><thead><tr><th class="id">pano_id</th>'
        f'<th class="id">store</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
    )


def _page(
    run: RunFolder,
    record: Mapping[str, Any],
    history: RunHistory,
    best: Mapping[str, Any] | None,
    metric: str,
    rows: list[dict[str, Any]],
    chosen: list[dict[str, Any]],
    model_dir: Path | None,
    model_step: int | None,
    notes: list[str],
    table_limit: int,
) -> str:
    tasks = tuple(record["tasks"])
    items = _summary_items(run, record, history, best)
    derived = "".join(f"<li>{html.escape(n)}</li>" for n in record.get("derived", []))
    summary = f"{run.path.name}: {record['train']['preset']} BridgeNet on {', '.join(tasks)}; " + (
        f"best {best['metric']} {format_figure(best['metric'], best['value'])} at step {best['step']}"
        if best
        else "no validation yet"
    )
    if history.train:
        losses = loss_charts_html(history.train)
        throughput = throughput_charts_html(history.train)
    else:
        losses = throughput = "<p>No training step logged yet.</p>"
    validation = validation_charts_html(history.val, best) if history.val else "<p>No validation in this run yet.</p>"
    if model_dir is None:
        worst = "<p>Not drawn (--worst 0, or no saved model yet).</p>"
        table = ""
    elif not rows:
        worst = "<p>The run has no validation panoramas.</p>"
        table = ""
    else:
        model = f"{model_dir.relative_to(run.path).as_posix()}/ (step {model_step})"
        worst = (
            f"<p>The run's model {html.escape(model)} predicted the {len(rows)} validation panoramas; each row is "
            f"<code>Meter.update</code>'s per-panorama figures. Labels and predictions at the training height "
            f"with the previews' colour maps; {html.escape(_ERROR_LEGEND)}. Click an image for its full size.</p>"
            + "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
            + _worst_html(chosen, rows, metric, tasks, record)
        )
        table = _panorama_table_html(rows, metric, table_limit, record)
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    body = f"""<h1>Training run report</h1>
<p class="summary" id="summary">{html.escape(summary)}</p>
{facts_table(items)}
<h2>Stores</h2>
{_stores_html(record)}
<h2>Derived configuration</h2>
<ul class="notes" id="derived">{derived}</ul>
{_best_figures_html(history, best)}
<p>Generated {generated} by mtpano {__version__} from {CONFIG_FILE} and metrics.jsonl; docs/training.md explains
the terms and figures.</p>
<h2>Loss</h2>
<p>Every term metrics.jsonl logs (each before its weight; the total is the weighted sum), one plot per task;
a log axis where the values span a factor of {LOG_RATIO:g} or more.</p>
{losses}
<h2>Validation (pooled over the validation panoramas)</h2>
<p>One plot per figure; the dashed red line and the red dot mark the best checkpoint's step.</p>
{validation}
<h2>Learning rate and throughput</h2>
{throughput}
<h2>The {len(chosen)} worst validation panoramas by <code>{html.escape(metric)}</code></h2>
{worst}
{table}"""
    return html_page(f"mtpano run report: {run.path}", body, _EXTRA_CSS)
