"""`mtpano evaluate` (a trained model against a ground-truth store) and `mtpano compare` (any
store against another): the figures of docs/evaluation.md, computed by evaluation.evaluate."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from mtpano.terminal import console, fail, progress, stdout_console

if TYPE_CHECKING:
    from evaluation.evaluate import EvaluationResult

# How each figure is shown: (header, format).
FIGURE_FORMATS = {
    "depth_absrel": ("AbsRel", "{:.4f}"),
    "depth_sqrel": ("SqRel", "{:.4f}"),
    "depth_rmse": ("RMSE", "{:.4f} m"),
    "depth_rmse_log": ("RMSE log (ln)", "{:.4f}"),
    "depth_log10": ("log10", "{:.4f}"),
    "depth_rmse_log10": ("RMSE log10", "{:.4f}"),
    "depth_delta1": ("δ < 1.25", "{:.2%}"),
    "depth_delta2": ("δ < 1.25²", "{:.2%}"),
    "depth_delta3": ("δ < 1.25³", "{:.2%}"),
    "semantic_miou": ("mIoU", "{:.2%}"),
    "semantic_mean_accuracy": ("mean class accuracy", "{:.2%}"),
    "semantic_pixel_accuracy": ("pixel accuracy", "{:.2%}"),
    "normals_mean_deg": ("mean angle", "{:.2f}°"),
    "normals_median_deg": ("median angle", "{:.2f}°"),
    "normals_rmse_deg": ("RMSE angle", "{:.2f}°"),
    "normals_within_11_25": ("< 11.25°", "{:.2%}"),
    "normals_within_22_5": ("< 22.5°", "{:.2%}"),
    "normals_within_30": ("< 30°", "{:.2%}"),
}
AGGREGATION_TITLES = {
    "pooled": "pooled: every valid pixel weighs the same",
    "per_panorama": "per_panorama: mean of each panorama's figure",
    "sphere": "sphere: pooled, pixels weighted by solid angle",
}
ALIGN_TEXT = {
    "none": "none (metric depth as predicted)",
    "median": "median (each panorama's prediction scaled by median(gt) / median(pred))",
    "lsq": "lsq (each panorama's prediction scaled by its least-squares factor)",
    "disparity_lsq": "disparity_lsq (least squares a·p + b ≈ 1/d per panorama: relative depth)",
}

ProtocolOption = Annotated[
    str, typer.Option(help="Benchmark protocol: synth | stanford2d3d | matterport3d | structured3d.")
]
AlignOption = Annotated[
    str | None,
    typer.Option(help="Depth alignment of metric predictions: none | median | lsq (default: none)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout instead of the tables.")]
CsvOption = Annotated[
    Path | None, typer.Option("--per-panorama", help="Write one CSV row per panorama (pano_id + every figure).")
]
BatchOption = Annotated[int, typer.Option(min=1, help="Panoramas per batch.")]
DeviceOption = Annotated[str | None, typer.Option(help="Torch device (default: cuda when there is one).")]
DataWorkersOption = Annotated[int, typer.Option(min=0, help="DataLoader processes reading the stores.")]


def _figure_table(result: EvaluationResult, aggregation: str) -> Table:
    """One aggregation's figures: task, figure, name, value ("-" where nothing was scored)."""
    from evaluation.metrics import FIGURE_NAMES

    table = Table(title=f"{AGGREGATION_TITLES[aggregation]} · align {result.align}", title_justify="left")
    for header in ("task", "figure", "name", "value"):
        table.add_column(header, justify="right" if header == "value" else "left")
    figures = result.figures[aggregation]
    for task in result.tasks:
        for name in FIGURE_NAMES[task]:
            header, fmt = FIGURE_FORMATS[name]
            value = figures[name]
            table.add_row(task, header, name, fmt.format(value) if math.isfinite(value) else "-")
        table.add_section()
    return table


def _print_result(result: EvaluationResult, subject: str) -> None:
    """The header lines and one table per aggregation, on stdout."""
    from evaluation.protocols import get_protocol

    out = stdout_console()

    def line(text: str) -> None:
        out.print(text, soft_wrap=True, highlight=False, markup=False)

    protocol = get_protocol(result.protocol)
    counts = ", ".join(f"{task} {n}" for task, n in result.task_panoramas.items())
    line(subject)
    line(
        f"protocol {protocol.name}: {protocol.description}; scored at {result.height}x{2 * result.height} (HxW); "
        f"{result.panoramas} panoramas (with scored pixels: {counts})"
    )
    line(f"alignment: {ALIGN_TEXT[result.align]}")
    if "semantic" in result.tasks:
        if result.class_mapping == "identity":
            line(f"classes: compared directly ({len(result.class_names)} classes, no mapping)")
        else:
            line(
                f"classes: mapped {result.class_mapping}; {len(result.ignored_classes)} predicted classes without "
                f"a counterpart are ignored (scored as misses): {', '.join(result.ignored_classes) or 'none'}"
            )
    partial = {t: c for t, c in result.coverage.items() if math.isfinite(c) and c != 1.0}
    if partial:
        shown = ", ".join(f"{t} {c:.2%}" for t, c in partial.items())
        line(f"coverage: the prediction labels {shown} of the ground truth's labelled pixels (only those are scored)")
    for note in result.notes:
        line(f"note: {note}")
    if result.unreadable:
        line(f"unreadable (not scored): {', '.join(result.unreadable)}")
    for aggregation in ("pooled", "per_panorama", "sphere"):
        out.print(_figure_table(result, aggregation))
    if result.class_iou:
        line("class IoU (pooled): " + ", ".join(f"{name} {iou:.1%}" for name, iou in result.class_iou.items()))


def _emit(result: EvaluationResult, subject: str, as_json: bool, per_panorama: Path | None) -> None:
    from evaluation.evaluate import write_per_panorama_csv
    from storage.labelstore import jsonable

    if per_panorama is not None:
        write_per_panorama_csv(result, per_panorama)
    if as_json:
        typer.echo(json.dumps(jsonable(result.to_json()), indent=2))
    else:
        _print_result(result, subject)
    if per_panorama is not None:
        console.print(f"wrote {per_panorama} ({len(result.rows)} panoramas)", soft_wrap=True, highlight=False)


class _Bar:
    """A progress bar on stderr that starts at the first report (so errors before it stay one line)."""

    def __init__(self, description: str) -> None:
        self.bars = progress()
        self.description = description
        self.task = None

    def __call__(self, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.bars.add_task(self.description, total=total, rate="")
            self.bars.start()
        elapsed = self.bars.tasks[0].elapsed or 0.0
        rate = f"{done / elapsed:.1f} pano/s" if elapsed > 0 else ""
        self.bars.update(self.task, completed=done, rate=rate)

    def stop(self) -> None:
        if self.task is not None:
            self.bars.stop()


def evaluate(
    model: Annotated[Path, typer.Argument(help="A run folder (its best/, else final/) or a saved model folder.")],
    gt_store: Annotated[str, typer.Argument(help="Ground-truth store with RGB (path or fsspec URL).")],
    protocol: ProtocolOption = "synth",
    align: AlignOption = None,
    checkpoint: Annotated[
        str | None, typer.Option(help="In a run folder: best, final, or the step N of checkpoints/step_<N>.")
    ] = None,
    batch: BatchOption = 4,
    device: DeviceOption = None,
    precision: Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16.")] = "auto",
    data_workers: DataWorkersOption = 2,
    as_json: JsonOption = False,
    per_panorama: CsvOption = None,
) -> None:
    """Predict every panorama of a ground-truth store with a trained BridgeNet and print the
    protocol's figures: one table per aggregation (pooled, per_panorama, sphere).

    Depth alignment: none for metric models, least squares in disparity for relative ones.
    Figures: docs/evaluation.md. Exit code 0, or 2 for bad input (one line).
    """
    from evaluation.evaluate import EvaluationError, evaluate_model

    bar = _Bar("evaluating")
    try:
        result = evaluate_model(
            model, gt_store, protocol, align, checkpoint, batch, device, precision, data_workers, on_progress=bar
        )
    except EvaluationError as err:
        bar.stop()
        fail(str(err))
    bar.stop()
    subject = f"model {result.model} (step {result.step}) on {result.store}"
    _emit(result, subject, as_json, per_panorama)


def compare(
    pred_store: Annotated[str, typer.Argument(help="Store scored: labels or predictions (path or fsspec URL).")],
    gt_store: Annotated[str, typer.Argument(help="Ground-truth store (path or fsspec URL).")],
    protocol: ProtocolOption = "synth",
    align: AlignOption = None,
    batch: BatchOption = 4,
    device: DeviceOption = None,
    data_workers: DataWorkersOption = 2,
    as_json: JsonOption = False,
    per_panorama: CsvOption = None,
) -> None:
    """Score a store (labels, predictions) against a ground-truth store, panoramas matched by
    pano_id, with the same figures as `mtpano evaluate`.

    A relative_disparity store is fitted in disparity; pixels the scored store leaves without a label
    are not scored (its coverage is printed). Exit code 0, or 2 for bad input or no matching panorama.
    """
    from evaluation.evaluate import EvaluationError, compare_stores

    bar = _Bar("comparing")
    try:
        result = compare_stores(pred_store, gt_store, protocol, align, batch, device, data_workers, on_progress=bar)
    except EvaluationError as err:
        bar.stop()
        fail(str(err))
    bar.stop()
    matched = result.panoramas + len(result.unreadable)
    made_by = f", model {result.model} step {result.step}" if result.model is not None else ""
    subject = (
        f"{result.prediction_store}{made_by} against {result.store}: {matched} panoramas matched by "
        f"pano_id ({result.only_in_prediction} only in the scored store, {result.only_in_ground_truth} only in "
        "the ground truth)"
    )
    _emit(result, subject, as_json, per_panorama)
