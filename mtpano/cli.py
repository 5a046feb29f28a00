"""The `mtpano` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mtpano import __version__

app = typer.Typer(
    help="Label-free multi-task panoramic scene understanding: pseudo-labels for 360° "
    "panoramas from perspective teachers, and a panoramic multi-task network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


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


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
    )


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
) -> None:
    """Label panoramas with teachers on gnomonic patches, fused into an ERP label store.

    Exit code 0 when every panorama is labelled, 3 when some failed (listed at the end),
    2 for usage errors. Running the same command again resumes: done panoramas are skipped.
    """
    import time

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
    )
    try:
        config.patch_layout()
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--layout") from None

    progress = _progress()
    state: dict = {}

    def on_start(todo: int, done: int) -> None:
        if done:
            console.print(f"resuming: {done} panoramas already labelled, {todo} to go")
        state["start"] = time.perf_counter()
        state["task"] = progress.add_task("labelling", total=todo, rate="")
        progress.start()

    def on_result(result: dict) -> None:
        if result["status"] != "ok":
            progress.console.print(f"[red]failed[/red] {result['pano_id']}: {result['error']}")
        done = progress.tasks[0].completed + 1
        rate = done / max(time.perf_counter() - state["start"], 1e-9)
        progress.update(state["task"], advance=1, rate=f"{rate:.2f} pano/s")

    try:
        summary = run_labels(data, out, config, options, on_start=on_start, on_result=on_result)
    except UsageError as err:
        console.print(f"[red]error:[/red] {err}", soft_wrap=True)
        raise typer.Exit(2) from None
    finally:
        progress.stop()
    rate = summary.labelled / summary.seconds if summary.seconds > 0 else 0.0
    console.print(
        f"{summary.total} panoramas in {out}: {summary.total - len(summary.failed)} ok, {len(summary.failed)} failed "
        f"({summary.labelled} labelled now in {summary.seconds:.1f} s, {rate:.2f} pano/s; "
        f"{summary.done_before} were done before)",
        soft_wrap=True,
    )
    if summary.failed:
        console.print("failed panoramas:")
        for pano_id, error in summary.failed:
            console.print(f"  {pano_id}: {error}", soft_wrap=True, markup=False)
    raise typer.Exit(summary.exit_code)


if __name__ == "__main__":
    app()
