"""The preview of one panorama's labels: one PNG a person reads at a glance.

A grid of panels, two per line, under a header line: the panorama; depth (turbo colour map,
near = red, with a scale bar); semantic classes (ADE20K palette, with a legend of the
classes present); normals (RGB = (n + 1) / 2, world frame); the patch layout (each pixel
tinted by its central patch, the patches' footprint borders in white: the seams of
docs/quality.md); each task's confidence (viridis, 0 to 1); and with ground truth, each
task's error map with its metrics in the title. Stores without a patch layout (ground
truth, predictions) have no patch panel. Every panel's label image is 2P x P pixels
(P = `panel_height`), with a title bar above and a side strip for its legend or scale bar;
`preview_layout` gives the boxes, so a test (or a script) can find each panel.

Text is drawn with OpenCV's Hershey font, which has ASCII glyphs only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from mtpano.visualize import colorize_depth, colorize_normals, colorize_scalar, colorize_semantic
from pipeline import quality
from pipeline.quality import FIGURES, SeamGeometry
from spherical.ade20k import ADE20K_PALETTE, IGNORE_ID
from storage.labelstore import StoreSpec

TITLE_HEIGHT = 24  # title bar above each panel
SIDE_WIDTH = 190  # legend / scale bar strip right of each panel
GAP = 10  # between panels and around the grid
HEADER_HEIGHT = 30  # the header line above the grid
COLUMNS = 2
BACKGROUND = (28, 28, 28)
TEXT = (235, 235, 235)
FONT = cv2.FONT_HERSHEY_SIMPLEX
DEPTH_ERROR_MAX = 0.25  # colour-map range of the depth error panel, |d - d*| / d*
NORMAL_ERROR_MAX_DEG = 45.0  # colour-map range of the normals error panel
LINE = 16  # legend line height


@dataclass(frozen=True)
class Panel:
    """Where one panel is in the preview: its label image spans x..x+width, y..y+height."""

    name: str
    x: int
    y: int
    width: int
    height: int


def panel_names(spec: StoreSpec, gt_tasks: tuple[str, ...] = ()) -> list[str]:
    """The panels of a store's preview, in order ("<task>_error" only for tasks with ground truth,
    "patches" only for stores with a patch layout)."""
    tasks = [t for t in ("depth", "semantic", "normals") if t in spec.tasks]
    return [
        "panorama",
        *tasks,
        *(["patches"] if spec.has_layout else []),
        *(f"{t}_confidence" for t in tasks),
        *(f"{t}_error" for t in tasks if t in gt_tasks),
    ]


def preview_layout(names: list[str], panel_height: int) -> tuple[tuple[int, int], list[Panel]]:
    """((height, width) of the preview, the panels' label-image boxes) for `names`."""
    cell_w, cell_h = 2 * panel_height + SIDE_WIDTH, TITLE_HEIGHT + panel_height
    panels = []
    for k, name in enumerate(names):
        row, col = divmod(k, COLUMNS)
        x = GAP + col * (cell_w + GAP)
        y = HEADER_HEIGHT + GAP + row * (cell_h + GAP) + TITLE_HEIGHT
        panels.append(Panel(name, x, y, 2 * panel_height, panel_height))
    rows = math.ceil(len(names) / COLUMNS)
    size = (HEADER_HEIGHT + GAP + rows * (cell_h + GAP), GAP + COLUMNS * (cell_w + GAP))
    return size, panels


# ---------------------------------------------------------------------- drawing helpers
def _text(image: np.ndarray, text: str, x: int, y: int, scale: float = 0.45, color=TEXT) -> None:
    """ASCII text with its baseline at y."""
    ascii_text = text.encode("ascii", "replace").decode("ascii")
    cv2.putText(image, ascii_text, (x, y), FONT, scale, color, 1, cv2.LINE_AA)


def _fit(rgb: np.ndarray, height: int, nearest: bool) -> np.ndarray:
    """(h,w,3) image resized to (height, 2*height): nearest for label maps, area/linear for photos."""
    if rgb.shape[:2] == (height, 2 * height):
        return rgb
    mode = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA if rgb.shape[0] > height else cv2.INTER_LINEAR
    return cv2.resize(rgb, (2 * height, height), interpolation=mode)


def _colorbar(
    image: np.ndarray, x: int, y: int, height: int, colors: np.ndarray, ticks: list[tuple[float, str]]
) -> None:
    """A vertical bar of `colors` ((n,3) top to bottom) at (x, y), with tick labels at
    fractions of its height (0 = top)."""
    bar = cv2.resize(colors[:, None, :].astype(np.uint8), (14, height), interpolation=cv2.INTER_LINEAR)
    image[y : y + height, x : x + 14] = bar
    for fraction, label in ticks:
        ty = y + round(fraction * (height - 1))
        image[ty, x + 14 : x + 19] = TEXT
        _text(image, label, x + 22, min(max(ty + 5, y + 10), y + height), 0.4)


def colorize_error(values: np.ndarray, vmax: float) -> np.ndarray:
    """(H,W) error in [0, vmax] (NaN = not compared) -> (H,W,3) uint8 inferno, black = not compared."""
    valid = np.isfinite(values)
    scaled = np.clip(np.nan_to_num(values) / vmax, 0.0, 1.0)
    bgr = cv2.applyColorMap(np.round(scaled * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return np.where(valid[..., None], bgr[..., ::-1], 0).astype(np.uint8)


def _patch_colors(count: int) -> np.ndarray:
    """(count,3) uint8 well-separated RGB colours (golden-angle hues)."""
    hue = (np.arange(count) * 137.508) % 360.0 / 2.0  # OpenCV hue is 0..180
    hsv = np.stack((hue, np.full(count, 170.0), np.full(count, 230.0)), -1).astype(np.uint8)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


# ---------------------------------------------------------------------- panels
@dataclass
class _Cell:
    title: str
    image: np.ndarray  # (P,2P,3) uint8
    side: np.ndarray  # (P,SIDE_WIDTH,3) uint8


def _blank_side(height: int) -> np.ndarray:
    return np.full((height, SIDE_WIDTH, 3), BACKGROUND, np.uint8)


def _side_lines(height: int, lines: list[str]) -> np.ndarray:
    side = _blank_side(height)
    for k, line in enumerate(lines[: max(1, (height - 4) // LINE)]):
        _text(side, line, 8, 14 + k * LINE, 0.4)
    return side


def _depth_cell(spec: StoreSpec, depth: np.ndarray, height: int) -> _Cell:
    """Depth as range (relative stores: 1/disparity, arbitrary scale), turbo, near = red."""
    relative = spec.depth_kind == "relative_disparity"
    with np.errstate(divide="ignore", invalid="ignore"):
        shown = np.where(depth > 0, 1.0 / depth, np.nan) if relative else depth.astype(np.float64)
    valid = np.isfinite(shown)
    lo, hi = np.percentile(shown[valid], [2, 98]) if valid.any() else (0.0, 1.0)
    hi = max(hi, lo + 1e-6)
    image = _fit(colorize_depth(shown, lo, hi), height, nearest=True)
    side = _blank_side(height)
    unit = "" if relative else " m"
    colors = colorize_depth(np.linspace(hi, lo, 64)[:, None], lo, hi)[:, 0]  # far (top) to near
    ticks = [(f, f"{hi - f * (hi - lo):.3g}{unit}") for f in (0.0, 0.5, 1.0)]
    _colorbar(side, 8, 8, height - 40, colors, ticks)
    _text(side, "relative range" if relative else "range (metres)", 8, height - 12, 0.4)
    return _Cell("depth" + (" (1/disparity, relative)" if relative else ""), image, side)


def _semantic_cell(spec: StoreSpec, semantic: np.ndarray, height: int) -> _Cell:
    image = _fit(colorize_semantic(semantic), height, nearest=True)
    side = _blank_side(height)
    labelled = semantic[semantic != IGNORE_ID].astype(np.int64)
    counts = np.bincount(labelled, minlength=len(spec.class_names))
    present = [int(c) for c in np.argsort(counts)[::-1] if counts[c] > 0]
    room = max(1, (height - 4) // LINE)
    shown = present if len(present) <= room else present[: room - 1]
    for k, c in enumerate(shown):
        y = 4 + k * LINE
        color = ADE20K_PALETTE[c] if c < len(ADE20K_PALETTE) else np.array([255, 255, 255])
        side[y : y + 12, 8:20] = color
        name = spec.class_names[c] if c < len(spec.class_names) else str(c)
        _text(side, f"{name[:16]} {counts[c] / max(labelled.size, 1):.0%}", 26, y + 11, 0.4)
    if len(shown) < len(present):
        _text(side, f"+{len(present) - len(shown)} more", 26, 4 + len(shown) * LINE + 11, 0.4)
    return _Cell(f"semantic ({len(present)} classes)", image, side)


def _normals_cell(normals: np.ndarray, height: int) -> _Cell:
    image = _fit(colorize_normals(normals), height, nearest=True)
    lines = ["RGB = (n + 1) / 2", "world frame:", "x right, y down,", "z forward", "black = no label"]
    return _Cell("normals", image, _side_lines(height, lines))


def _confidence_cell(task: str, confidence: np.ndarray, height: int) -> _Cell:
    image = _fit(colorize_scalar(confidence.astype(np.float32)), height, nearest=True)
    side = _blank_side(height)
    colors = colorize_scalar(np.linspace(1.0, 0.0, 64)[:, None])[:, 0]
    _colorbar(side, 8, 8, height - 40, colors, [(0.0, "1"), (0.5, "0.5"), (1.0, "0")])
    valid = np.isfinite(confidence)
    mean = float(np.mean(confidence[valid])) if valid.any() else math.nan
    _text(side, f"mean {mean:.3f}", 8, height - 12, 0.4)
    return _Cell(f"{task} confidence", image, side)


def _patches_cell(spec: StoreSpec, rgb: np.ndarray, seams: SeamGeometry, height: int) -> _Cell:
    """The panorama dimmed, tinted by each pixel's central patch, with every patch's footprint
    border in white and the patch numbers at the patches' centres."""
    colors = _patch_colors(spec.num_patches)
    owner = seams.owner.cpu().numpy()
    tint = np.where((owner >= 0)[..., None], colors[np.clip(owner, 0, None)], 0)
    gray = rgb.astype(np.float32).mean(-1, keepdims=True)
    base = _fit((0.45 * gray + 0.55 * tint).astype(np.uint8), height, nearest=True)
    # Borders at panel resolution, from the patch-set codes, so lines stay one pixel wide.
    sets = cv2.resize(
        seams.patch_set.cpu().numpy().astype(np.float64), (2 * height, height), interpolation=cv2.INTER_NEAREST
    )
    border = sets != np.roll(sets, -1, axis=1)
    border[:-1] |= sets[:-1] != sets[1:]
    image = base.copy()
    image[border] = 255
    layout = quality.store_layout(spec)
    for n, (yaw, pitch) in enumerate(zip(layout.yaw_deg, layout.pitch_deg, strict=True)):
        x = int((yaw + 180.0) / 360.0 * 2 * height)
        y = int((90.0 - pitch) / 180.0 * height)
        _text(image, str(n), min(max(x - 6, 0), 2 * height - 16), min(max(y + 5, 12), height - 2), 0.4)
    lines = [
        f"{spec.num_patches} patches, {spec.patch_size} px",
        f"layout {spec.layout}"[:26],
        "tint: central patch",
        "white: footprint borders",
        "(the seams)",
    ]
    return _Cell("patch layout and seams", image, _side_lines(height, lines))


def _error_cell(task: str, errors: np.ndarray, metrics: Mapping[str, float], height: int) -> _Cell:
    if task == "semantic":
        colors = np.zeros((*errors.shape, 3), np.uint8)
        colors[errors == 0] = (90, 90, 90)
        colors[errors == 1] = (230, 40, 40)
        side = _side_lines(height, ["grey: right class", "red: wrong class", "black: not compared"])
        title = "semantic error: acc {} mIoU {}"
        values = ("semantic_gt_accuracy", "semantic_gt_miou")
    else:
        vmax, unit = (DEPTH_ERROR_MAX, "") if task == "depth" else (NORMAL_ERROR_MAX_DEG, " deg")
        colors = colorize_error(errors, vmax)
        side = _blank_side(height)
        bar = colorize_error(np.linspace(vmax, 0.0, 64)[:, None], vmax)[:, 0]
        _colorbar(side, 8, 8, height - 40, bar, [(0.0, f"{vmax:g}{unit}"), (0.5, f"{vmax / 2:g}"), (1.0, "0")])
        _text(side, "|d - d*| / d*" if task == "depth" else "angle to true normal", 8, height - 12, 0.4)
        if task == "depth":
            title, values = (
                "depth error: AbsRel {} RMSE {} d<1.25 {}",
                ("depth_gt_absrel", "depth_gt_rmse", "depth_gt_delta1"),
            )
        else:
            title = "normals error: mean {} median {} <11.25 {}"
            values = ("normals_gt_mean_deg", "normals_gt_median_deg", "normals_gt_within_11_25")
    formatted = [FIGURES[v].format(metrics.get(v)).replace("°", " deg") for v in values]
    return _Cell(title.format(*formatted), _fit(colors, height, nearest=True), side)


def render_preview(
    spec: StoreSpec,
    row: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    seams: SeamGeometry | None,
    gt: Mapping[str, np.ndarray] | None = None,
    panel_height: int = 256,
) -> tuple[np.ndarray, list[Panel]]:
    """The preview of one panorama.

    Args:
        row: its manifest row (figures for the header line).
        arrays: its stored arrays (`rgb` and the label arrays).
        seams: the store's `SeamGeometry`; None for a store without a patch layout.
        gt: ground truth on the label grid (`storage.groundtruth.read_ground_truth`), or None.
        panel_height: P, the height of every panel's label image (its width is 2P).
    Returns:
        (H,W,3) uint8 RGB image and its panels (`preview_layout`).
    """
    gt = dict(gt or {})
    rgb = arrays["rgb"].transpose(1, 2, 0)  # (3,H,W) -> (H,W,3)
    cells = {"panorama": _Cell("panorama", _fit(rgb, panel_height, nearest=False), _blank_side(panel_height))}
    if "depth" in spec.tasks:
        cells["depth"] = _depth_cell(spec, arrays["depth"], panel_height)
    if "semantic" in spec.tasks:
        cells["semantic"] = _semantic_cell(spec, arrays["semantic"], panel_height)
    if "normals" in spec.tasks:
        cells["normals"] = _normals_cell(arrays["normals"], panel_height)
    if seams is not None:
        cells["patches"] = _patches_cell(spec, rgb, seams, panel_height)
    for task in spec.tasks:
        cells[f"{task}_confidence"] = _confidence_cell(task, arrays[f"{task}_confidence"], panel_height)
    errors = quality.error_maps(spec, arrays, gt)
    metrics = quality.gt_figures(spec, arrays, gt)
    for task, error in errors.items():
        cells[f"{task}_error"] = _error_cell(task, error, metrics, panel_height)
    names = panel_names(spec, tuple(errors))
    (height, width), panels = preview_layout(names, panel_height)
    image = np.full((height, width, 3), BACKGROUND, np.uint8)
    _text(image, _header(spec, row), GAP, 20, 0.5)
    for panel in panels:
        cell = cells[panel.name]
        _text(image, cell.title, panel.x, panel.y - 7, 0.45)
        image[panel.y : panel.y + panel.height, panel.x : panel.x + panel.width] = cell.image
        side_x = panel.x + panel.width
        image[panel.y : panel.y + panel.height, side_x : side_x + SIDE_WIDTH] = cell.side
    return image, panels


def _header(spec: StoreSpec, row: Mapping[str, Any]) -> str:
    parts = [f"{row['pano_id']} [{row['status']}]", f"{spec.kind} {spec.erp_width}x{spec.erp_height}"]
    for task in spec.tasks:
        disagreement = "normals_disagreement_deg" if task == "normals" else f"{task}_disagreement"
        names = (f"{task}_coverage", disagreement, f"{task}_seam_error") if spec.has_layout else (f"{task}_coverage",)
        shown = [(n, FIGURES[n]) for n in names]
        parts.append(f"{task}: " + " ".join(f"{f.header} {f.format(row.get(n))}" for n, f in shown))
    return "   ".join(parts).replace("°", "")
