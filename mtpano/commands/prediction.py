"""`mtpano predict`: a trained BridgeNet labels panoramas into a store in the label format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtpano.terminal import PanoramaProgress, console, fail


def predict(
    model: Annotated[str, typer.Argument(help="A training run folder (its best/, else final/) or a saved model.")],
    data: Annotated[str, typer.Argument(help="Folder of panoramas (searched recursively) or a text file of paths.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Store to write: a path or fsspec URL.")],
    checkpoint: Annotated[
        str | None, typer.Option(help="In a run folder: best | final | a step number (default best, else final).")
    ] = None,
    erp_height: Annotated[
        int | None, typer.Option(min=14, help="Prediction height H (H x 2H; default: the model's training height).")
    ] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Workers (default: one per GPU, else 1).")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Torch threads per CPU worker.")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Panoramas per forward pass.")] = 2,
    address: Annotated[str | None, typer.Option(help="Join this Ray cluster instead of starting one.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a store made with another model or height.")] = False,
    in_process: Annotated[bool, typer.Option(help="Run in this process without Ray.")] = False,
    keep_freed_memory: Annotated[
        bool, typer.Option(help="Workers keep the memory they free for reuse (glibc): faster on a CPU, the peak held.")
    ] = True,
    png: Annotated[
        Path | None, typer.Option(help="Also write per-panorama images (depth, normals, semantic) into this folder.")
    ] = None,
    ply: Annotated[
        Path | None, typer.Option(help="Also write a coloured point cloud (.ply) per panorama into this folder.")
    ] = None,
    ply_stride: Annotated[int, typer.Option(min=1, help="Point clouds keep every N-th row and column.")] = 2,
) -> None:
    """Predict depth, semantics and normals of panoramas with a trained BridgeNet into a store.

    The store has the label format (kind "predictions"): inspect, report, verify, compare and train
    read it like labels. Exit code 0 when every panorama is predicted, 3 when some failed, 2 for
    usage errors. Running the same command again resumes.
    """
    from pipeline.config import RunOptions
    from pipeline.predictor import run_predict
    from pipeline.run import UsageError

    options = RunOptions(
        workers=workers,
        address=address,
        overwrite=overwrite,
        panoramas_per_call=batch,
        threads_per_worker=threads,
        in_process=in_process,
        keep_freed_memory=keep_freed_memory,
    )
    bars = PanoramaProgress("predicting", "predicted")

    try:
        summary = run_predict(
            data,
            out,
            model,
            options,
            checkpoint=checkpoint,
            erp_height=erp_height,
            png_dir=str(png) if png is not None else None,
            ply_dir=str(ply) if ply is not None else None,
            ply_stride=ply_stride,
            on_start=bars.on_start,
            on_result=bars.on_result,
        )
    except UsageError as err:
        fail(str(err))
    finally:
        bars.stop()
    bars.print_summary(out, summary.total, len(summary.failed), summary.labelled, summary.seconds, summary.done_before)
    for what, where in (("images", png), ("point clouds", ply)):
        if where:
            console.print(f"{what} in {where}", soft_wrap=True, highlight=False)
    bars.print_failed(summary.failed)
    raise typer.Exit(summary.exit_code)
