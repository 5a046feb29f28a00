"""Data commands: `mtpano import` (a dataset's ground truth as a store)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtpano.terminal import PanoramaProgress, console, fail


def import_store(
    src: Annotated[Path, typer.Argument(help="The dataset folder, in the layout of --format.")],
    dataset_format: Annotated[
        str,
        typer.Option(
            "--format", "-f", help="Dataset layout: synth | stanford2d3d | structured3d | matterport3d | replica."
        ),
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Store to write: a path or fsspec URL.")],
    split: Annotated[
        str | None, typer.Option(help="Import one standard split of the dataset (e.g. train, val, test).")
    ] = None,
    height: Annotated[
        int | None, typer.Option(min=16, help="Store height H (H x 2H; default: the dataset's native height).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a store made from another source or format.")] = False,
) -> None:
    """Import a dataset's ground truth as a store of kind ground_truth (same format as label stores).

    Formats: synth (a `mtpano synth` folder), stanford2d3d, structured3d, matterport3d (as the 360° depth benchmarks distribute it), replica (the team's reference layout); docs/datasets.md.

    Exit code 0 when every panorama is imported, 3 when some failed (listed at the end), 2 for usage errors (nothing written). Running the same command again resumes.
    """  # noqa: E501

    from storage.importers import ImportConfig, UsageError, import_dataset

    bars = PanoramaProgress("importing", "imported")
    config = ImportConfig(format=dataset_format, split=split, height=height, overwrite=overwrite)
    try:
        summary = import_dataset(src, out, config, on_start=bars.on_start, on_result=bars.on_result)
    except UsageError as err:
        fail(str(err))  # before the bar starts: the error is the only line
    finally:
        bars.stop()
    detail = f"{dataset_format}{f' {split}' if split else ''}, {2 * summary.height}x{summary.height}"
    bars.print_summary(
        out, summary.total, len(summary.failed), summary.imported, summary.seconds, summary.done_before, detail
    )
    if summary.normals_depth_walls_deg is not None:
        console.print(
            f"normals agree with the normals of the depth to a median of {summary.normals_depth_walls_deg:.1f}° "
            "on walls",
            highlight=False,
        )
    bars.print_failed(summary.failed)
    raise typer.Exit(summary.exit_code)
