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


if __name__ == "__main__":
    app()
