"""The `mtpano` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.progress import Progress

from mtpano import __version__
from mtpano.commands.data import import_store
from mtpano.commands.evaluation import compare, evaluate
from mtpano.commands.experiment import experiment
from mtpano.commands.prediction import predict
from mtpano.commands.training import train
from mtpano.terminal import PanoramaProgress, console, fail, stdout_console
from mtpano.terminal import progress as _progress

app = typer.Typer(
    help="Label-free multi-task panoramic scene understanding: pseudo-labels for 360° "
    "panoramas from perspective teachers, and a panoramic multi-task network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mtpano {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """mtpano command line."""


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the data set into.")],
    count: Annotated[int, typer.Option(min=1, help="Number of rooms.")] = 4,
    height: Annotated[int, typer.Option(min=16, help="ERP height of the panoramas (width 2H).")] = 512,
    first_seed: Annotated[int, typer.Option(min=0, help="Seed of the first room; rooms use consecutive seeds.")] = 0,
    previews: Annotated[bool, typer.Option(help="Also write a ground-truth preview per room.")] = True,
) -> None:
    """Render synthetic rooms with ground truth: images/, gt/, scenes/ (and previews/)."""
    import time

    from mtpano.visualize import colorize_depth, colorize_normals, colorize_semantic, write_rgb
    from storage import groundtruth
    from synthetic.dataset import pano_name, rgb_to_uint8, write_panorama
    from synthetic.render import render_erp
    from synthetic.scene import generate_scene

    seeds = list(range(first_seed, first_seed + count))
    start = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("rendering", total=count, rate="")
        for done, seed in enumerate(seeds, 1):
            scene = generate_scene(seed)
            render = render_erp(scene, height)
            write_panorama(out, scene, render)
            if previews:
                name = pano_name(seed)
                depth = groundtruth.read_depth(out / "gt" / f"{name}_depth.png")
                panels = [
                    rgb_to_uint8(render.rgb.numpy()),
                    colorize_depth(depth),
                    colorize_normals(render.normals.numpy()),
                    colorize_semantic(render.semantic.numpy()),
                ]
                grid = np.concatenate((np.concatenate(panels[:2], 1), np.concatenate(panels[2:], 1)), 0)
                (out / "previews").mkdir(parents=True, exist_ok=True)
                write_rgb(out / "previews" / f"{name}.png", grid)
            rate = done / (time.perf_counter() - start)
            progress.update(task, advance=1, rate=f"{rate:.1f} pano/s")
    console.print(
        f"wrote {count} rooms ({2 * height}x{height}) to {out}: images/, gt/, scenes/"
        + (", previews/" if previews else "")
    )


@app.command()
def labels(
    data: Annotated[str, typer.Argument(help="Folder of panoramas (searched recursively) or a text file of paths.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Label store to write: a path or fsspec URL.")],
    depth_teacher: Annotated[
        str, typer.Option(help="Depth teacher: quality | fast | sim[:...] | hf:ID_OR_DIR | py:module:factory | none.")
    ] = "quality",
    semantic_teacher: Annotated[str, typer.Option(help="Semantic teacher (same forms).")] = "quality",
    normal_teacher: Annotated[str, typer.Option(help="Normals teacher (same forms, or geometric).")] = "quality",
    layout: Annotated[
        str, typer.Option(help="Patch layout: cube | icosahedron | fibonacci:N | random:N.")
    ] = "icosahedron",
    fov: Annotated[float | None, typer.Option(help="Patch FoV in degrees (default: the layout's).")] = None,
    patch_size: Annotated[int, typer.Option(min=16, help="Patch side in pixels.")] = 518,
    erp_height: Annotated[int, typer.Option(min=16, help="Label height H (labels are H x 2H).")] = 512,
    workers: Annotated[int | None, typer.Option(min=1, help="Workers (default: one per GPU, else 1).")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Torch threads per CPU worker.")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Panoramas per worker call (teacher batches span them).")] = 2,
    address: Annotated[str | None, typer.Option(help="Join this Ray cluster instead of starting one.")] = None,
    keep_patches: Annotated[bool, typer.Option(help="Also keep the teachers' raw patch outputs.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a store made with another configuration.")] = False,
    in_process: Annotated[bool, typer.Option(help="Run in this process without Ray (to debug a teacher).")] = False,
    keep_freed_memory: Annotated[
        bool, typer.Option(help="Workers keep the memory they free for reuse (glibc): faster on a CPU, the peak held.")
    ] = True,
) -> None:
    """Label panoramas with teachers on gnomonic patches, fused into an ERP label store.

    Exit code 0 when every panorama is labelled, 3 when some failed (listed at the end),
    2 for usage errors. Running the same command again resumes: done panoramas are skipped.
    """

    from pipeline.config import LabelConfig, RunOptions
    from pipeline.run import UsageError, run_labels

    if fov is not None and not 0 < fov < 180:
        raise typer.BadParameter("must lie in (0, 180) degrees", param_hint="--fov")
    config = LabelConfig(
        depth_teacher=depth_teacher,
        semantic_teacher=semantic_teacher,
        normal_teacher=normal_teacher,
        layout=layout,
        fov_deg=fov,
        patch_size=patch_size,
        erp_height=erp_height,
        keep_patches=keep_patches,
    )
    options = RunOptions(
        workers=workers,
        address=address,
        overwrite=overwrite,
        panoramas_per_call=batch,
        threads_per_worker=threads,
        in_process=in_process,
        keep_freed_memory=keep_freed_memory,
    )
    try:
        config.patch_layout()
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--layout") from None

    bars = PanoramaProgress("labelling", "labelled")
    try:
        summary = run_labels(data, out, config, options, on_start=bars.on_start, on_result=bars.on_result)
    except UsageError as err:
        fail(str(err))
    finally:
        bars.stop()
    bars.print_summary(out, summary.total, len(summary.failed), summary.labelled, summary.seconds, summary.done_before)
    bars.print_failed(summary.failed)
    raise typer.Exit(summary.exit_code)


def _open_store(url: str):
    """The store at `url`, or a one-line error and exit code 2."""
    from storage.labelstore import LabelStore, StoreError

    try:
        return LabelStore.open(url)
    except StoreError as err:
        console.print(f"[red]error:[/red] {err}", soft_wrap=True, markup=True)
        raise typer.Exit(2) from None


def _check_figure(name: str | None, option: str = "--sort") -> str:
    from pipeline.quality import DEFAULT_SORT, FIGURES

    if name is None:
        return DEFAULT_SORT
    if name not in FIGURES:
        raise typer.BadParameter(f"unknown figure {name!r}; figures: {', '.join(FIGURES)}", param_hint=option)
    return name


def _figure_list() -> str:
    from pipeline.quality import FIGURES

    return ", ".join(FIGURES)


def _reading_progress(progress: Progress, description: str):
    """An `on_progress(done, total)` callback that drives one bar of `progress`."""
    state: dict = {}

    def update(done: int, total: int) -> None:
        if "task" not in state:
            state["task"] = progress.add_task(description, total=total, rate="")
            progress.start()
        progress.update(state["task"], completed=done)

    return update


@app.command()
def inspect(
    store: Annotated[str, typer.Argument(help="Label store: a path or fsspec URL.")],
    pano_id: Annotated[
        str | None, typer.Argument(help="Show one panorama (its id, or the last component of the id).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of a table.")] = False,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="Print the panoramas as CSV to stdout (scalar columns).")
    ] = False,
    sort: Annotated[
        str | None,
        typer.Option(help="Sort by this figure, worst first (e.g. depth_seam_error; see docs/quality.md)."),
    ] = None,
    worst: Annotated[
        int | None, typer.Option(min=1, help="Only the N worst panoramas (by --sort; default min_confidence).")
    ] = None,
    figures: Annotated[
        str | None, typer.Option(help="Comma-separated figures to show as table columns (default: per task a few).")
    ] = None,
    recompute: Annotated[
        bool,
        typer.Option(help="Recompute coverage, confidence, seam figures and class histogram from the arrays."),
    ] = False,
    preview: Annotated[
        Path | None, typer.Option(help="With PANO_ID: write its preview image (PNG) to this file.")
    ] = None,
    gt: Annotated[
        Path | None,
        typer.Option(help="Ground-truth folder (mtpano synth's gt/ format, <name>_depth.png ...): GT metrics."),
    ] = None,
    gt_depth: Annotated[
        Path | None, typer.Option(help="With PANO_ID: ground-truth depth PNG (overrides --gt).")
    ] = None,
    gt_normals: Annotated[Path | None, typer.Option(help="With PANO_ID: ground-truth normals PNG.")] = None,
    gt_semantic: Annotated[Path | None, typer.Option(help="With PANO_ID: ground-truth semantic PNG.")] = None,
    panel_height: Annotated[int, typer.Option(min=32, help="Height of each preview panel in pixels.")] = 256,
) -> None:
    """Show the quality figures of a label store's panoramas, or of one panorama.

    Without PANO_ID: a table of every panorama and a store-wide summary line (--json / --csv for scripts).

    --sort FIGURE ranks the panoramas worst first, --worst N keeps the N worst. Figures: docs/quality.md.

    Figures come from the manifest; --recompute recomputes them from the arrays, --gt adds GT metrics.

    With PANO_ID: its figures per task; --preview FILE.png draws its labels, confidences and seams.
    """
    import json

    from mtpano import inspection
    from storage.labelstore import jsonable

    if as_json and as_csv:
        raise typer.BadParameter("choose one of --json and --csv", param_hint="--json/--csv")
    sort_figure = _check_figure(sort)
    columns = None
    if figures is not None:
        columns = [_check_figure(f.strip(), "--figures") for f in figures.split(",") if f.strip()]
    if gt is not None and not gt.is_dir():
        raise typer.BadParameter(f"{gt} is not a folder", param_hint="--gt")
    per_task = {"depth": gt_depth, "normals": gt_normals, "semantic": gt_semantic}
    if pano_id is None and (preview is not None or any(per_task.values())):
        raise typer.BadParameter("--preview and --gt-<task> need a PANO_ID", param_hint="PANO_ID")
    label_store = _open_store(store)
    if pano_id is not None:
        _inspect_one(label_store, pano_id, as_json, recompute, preview, gt, per_task, panel_height)
        return
    progress = _progress()
    try:
        rows = inspection.load_figures(
            label_store, recompute, gt, on_progress=_reading_progress(progress, "reading arrays")
        )
    finally:
        progress.stop()
    facts = inspection.summary(label_store, rows)
    if gt is not None:
        compared = sum(inspection.has_ground_truth(r) for r in rows)
        console.print(f"ground truth found in {gt} for {compared} of {facts['ok']} ok panoramas", soft_wrap=True)
    ranked = inspection.sort_rows(rows, sort_figure) if (sort is not None or worst is not None) else rows
    if worst is not None:
        ranked = [r for r in ranked if inspection.is_finite(r.get(sort_figure))][:worst]
    if as_json:
        typer.echo(json.dumps(jsonable({"summary": facts, "panoramas": ranked}), indent=1))
        return
    if as_csv:
        import csv
        import sys

        header = inspection.scalar_columns(rows)
        writer = csv.DictWriter(sys.stdout, fieldnames=header, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in ranked:
            writer.writerow({k: ("" if v is None else v) for k, v in jsonable(row).items() if k in header})
        console.print(inspection.summary_line(facts), soft_wrap=True, markup=False, highlight=False)
        return
    _print_table(label_store, ranked, facts, columns, sort_figure if sort is not None or worst is not None else None)


def _print_table(store, rows: list, facts: dict, columns: list[str] | None, sort_figure: str | None) -> None:
    from rich.table import Table

    from mtpano import inspection
    from pipeline.quality import FIGURES

    out = stdout_console()
    columns = columns or inspection.default_columns(store.spec, rows)
    if sort_figure is not None and sort_figure not in columns:
        columns = [sort_figure, *columns]
    title = f"{store.url} · {store.spec.kind}" + (f" · worst first by {sort_figure}" if sort_figure else "")
    table = Table(title=title, title_justify="left")
    table.add_column("pano_id", overflow="fold")
    table.add_column("status")
    for name in columns:
        f = FIGURES[name]
        header = f"{f.task}\n{f.header}" if f.task != "all" else f.header
        table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        status = row["status"] if row["status"] == "ok" else f"[red]{row['status']}[/red]"
        table.add_row(row["pano_id"], status, *(FIGURES[c].format(row.get(c)) for c in columns))
    out.print(table)
    out.print(inspection.summary_line(facts), soft_wrap=True, markup=False, highlight=False)


def _inspect_one(store, pano_id, as_json, recompute, preview, gt_dir, per_task, panel_height) -> None:
    import json

    from rich.table import Table

    from mtpano import inspection
    from pipeline import quality
    from pipeline.quality import FIGURES
    from storage import groundtruth
    from storage.labelstore import jsonable

    rows = inspection.load_figures(store)
    try:
        row = dict(inspection.find_panorama(rows, pano_id))
    except LookupError as err:
        console.print(f"[red]error:[/red] {err}", soft_wrap=True)
        raise typer.Exit(2) from None
    index = int(row["index"])
    files = groundtruth.ground_truth_files(gt_dir, row["pano_id"]) if gt_dir is not None else {}
    files.update({task: path for task, path in per_task.items() if path is not None})
    missing = [str(p) for p in files.values() if not Path(p).is_file()]
    if missing:
        console.print(f"[red]error:[/red] ground truth not found: {', '.join(missing)}", soft_wrap=True)
        raise typer.Exit(2)
    if gt_dir is not None and not files:
        name = row["pano_id"].rsplit("/", 1)[-1]
        console.print(
            f"[red]error:[/red] no ground truth for {row['pano_id']} in {gt_dir} (expected {name}_depth.png, ...)"
        )
        raise typer.Exit(2)
    needs_arrays = recompute or files or preview is not None
    if needs_arrays and row["status"] != "ok":
        console.print(f"[red]error:[/red] {row['pano_id']} is {row['status']}: it has no labels to read")
        raise typer.Exit(2)
    gt_maps = None
    if needs_arrays:
        arrays = store.read(index, ["rgb", *inspection.label_arrays(store.spec)])
        seams = inspection.store_seams(store.spec)
        if recompute:
            row.update(quality.array_figures(store.spec, arrays, seams))
        if files:
            try:
                gt_maps = groundtruth.read_ground_truth(files, store.spec.erp_height)
            except (OSError, ValueError) as err:
                console.print(f"[red]error:[/red] {err}", soft_wrap=True)
                raise typer.Exit(2) from None
            row.update(quality.gt_figures(store.spec, arrays, gt_maps))
        row = quality.with_derived(row)
    if preview is not None:
        from mtpano.preview import render_preview
        from mtpano.visualize import write_rgb

        image, panels = render_preview(store.spec, row, arrays, seams, gt_maps, panel_height)
        preview.parent.mkdir(parents=True, exist_ok=True)
        write_rgb(preview, image)
        names = ", ".join(p.name for p in panels)
        console.print(f"wrote {preview} ({image.shape[1]}x{image.shape[0]}): {names}", soft_wrap=True)
    if as_json:
        typer.echo(json.dumps(jsonable(row), indent=1))
        return
    out = stdout_console()
    out.print(
        f"[bold]{row['pano_id']}[/bold] (index {index}) · {row['status']} · {store.spec.kind} · source {row['source']}",
        soft_wrap=True,
    )
    if row.get("error"):
        out.print(f"error: {row['error']}", soft_wrap=True, markup=False)
    timings = [f"{k[2:]} {row[k]:.2f} s" for k in sorted(row) if k.startswith("t_") and row[k] is not None]
    if timings:
        out.print("timings: " + ", ".join(timings))
    table = Table(title_justify="left")
    for name, justify in (("task", "left"), ("figure", "left"), ("value", "right"), ("meaning", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for task, name, value in inspection.figures_by_task(store.spec, row):
        table.add_row(task, name, FIGURES[name].format(value), FIGURES[name].description)
    out.print(table)
    classes = inspection.top_classes(store.spec, row)
    if classes:
        out.print("classes: " + ", ".join(f"{n} {s:.1%}" for n, s in classes), soft_wrap=True)


@app.command()
def report(
    store: Annotated[
        str,
        typer.Argument(
            metavar="STORE|RUN",
            help="Label store (a path or fsspec URL), or a training run folder (it holds train_config.json).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write index.html and its images into.")],
    sort: Annotated[
        str | None,
        typer.Option(
            help="Figure that ranks the worst panoramas (store: default min_confidence; run: a validation "
            "figure, default the run's best metric)."
        ),
    ] = None,
    worst: Annotated[
        int, typer.Option(min=0, help="Worst panoramas drawn (run: 0 draws the curves without predicting).")
    ] = 12,
    gt: Annotated[
        Path | None, typer.Option(help="Store only: ground-truth folder (mtpano synth's gt/ format), GT metrics.")
    ] = None,
    recompute: Annotated[
        bool, typer.Option(help="Store only: recompute the figures the arrays determine instead of the manifest's.")
    ] = False,
    table_limit: Annotated[int, typer.Option(min=1, help="Most panoramas in the page's table (the worst).")] = 1000,
    panel_height: Annotated[int, typer.Option(min=32, help="Height of each preview panel in pixels.")] = 256,
) -> None:
    """Write a static HTML report of a label store or of a training run into a folder.

    STORE: summary, the distribution of every figure, the worst panoramas (by --sort) with
    thumbnails linking to their previews, and a sortable table. Figures: docs/quality.md.

    RUN: summary, loss curves per task, validation figures over the steps (best step marked),
    learning rate, samples/s and data wait, and the worst validation panoramas as the run's best
    model predicts them, next to their labels (docs/training.md).

    It needs no server and no network: open DIR/index.html in any browser.
    """
    from mtpano.report import write_report
    from mtpano.run_report import RunReportError, is_run_folder, write_run_report

    run = is_run_folder(store)
    if run and (gt is not None or recompute):
        raise typer.BadParameter("--gt and --recompute apply to a label store, not to a run", param_hint="--gt")
    sort_figure = None if run else _check_figure(sort)
    if gt is not None and not gt.is_dir():
        raise typer.BadParameter(f"{gt} is not a folder", param_hint="--gt")
    label_store = None if run else _open_store(store)
    progress = _progress()
    bars: dict = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = progress.add_task(stage, total=total, rate="")
            progress.start()
        progress.update(bars[stage], completed=done)

    try:
        if run:
            run_files = write_run_report(store, out, sort, worst, table_limit, panel_height, on_progress)
        else:
            files = write_report(
                label_store, out, sort_figure, worst, gt, recompute, table_limit, panel_height, on_progress
            )
    except RunReportError as err:
        fail(str(err))
    finally:
        progress.stop()
    if run:
        drawn = f"the {len(run_files.worst)} worst of {len(run_files.rows)} validation panoramas by {run_files.metric}"
        console.print(
            f"wrote {run_files.index}: {run_files.train_records} logged steps, {run_files.val_records} validations, "
            + (drawn if run_files.rows else "no validation panoramas drawn"),
            soft_wrap=True,
        )
        return
    console.print(
        f"wrote {files.index} with {len(files.thumbnails)} thumbnails and previews of the worst panoramas "
        f"by {sort_figure}",
        soft_wrap=True,
    )


@app.command()
def verify(
    store: Annotated[str, typer.Argument(help="Label store: a path or fsspec URL.")],
) -> None:
    """Check a label store's integrity; exit code 0 when clean, 1 when not.

    Arrays exist with their dtypes and shapes; one manifest row per index, none past the end.

    Every ok row: its shards exist and read; depth finite and positive, normals of unit length,
    class ids valid, confidences in [0, 1], no NaN (or 255) where a confidence claims a label.

    Problems are printed one per line with their panorama ids.
    """
    from storage.verify import verify_store

    progress = _progress()
    try:
        result = verify_store(store, on_progress=_reading_progress(progress, "verifying"))
    finally:
        progress.stop()
    for problem in result.problems:
        typer.echo(str(problem))
    counts = ", ".join(f"{n} {status}" for status, n in result.statuses.items())
    if result.clean:
        console.print(
            f"{store} ({result.kind}): clean ({result.rows} panoramas: {counts}; {result.ok_rows_read} ok rows read)",
            soft_wrap=True,
        )
        raise typer.Exit(0)
    console.print(
        f"{store} ({result.kind}): {len(result.problems)} problems in {result.bad_panoramas} panoramas"
        f" ({result.rows} panoramas: {counts})",
        soft_wrap=True,
    )
    raise typer.Exit(1)


# Commands defined in mtpano/commands/ are registered here, below the ones above.
app.command("import")(import_store)
app.command()(train)
app.command()(evaluate)
app.command()(predict)
app.command()(compare)
app.command()(experiment)

if __name__ == "__main__":
    app()
