"""`mtpano experiment`: the pseudo-labels-versus-ground-truth experiment, with its ablations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mtpano.terminal import console, fail


def experiment(
    config: Annotated[Path, typer.Argument(help="Experiment config (YAML or JSON; see experiments/).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of the experiment (resumed when it exists).")],
    data_workers: Annotated[int, typer.Option(min=0, help="DataLoader processes per training run.")] = 0,
) -> None:
    """Train the identical network on ground truth and on mtpano's labels, with ablations, and
    score every run on held-out ground truth.

    Writes DIR/results.json, DIR/results.md and DIR/index.html, and one run folder per row and
    seed. Rerunning the command after a crash redoes only what is missing.
    """
    from mtpano.experiment import ExperimentError, ExperimentProgress, read_experiment_config, run_experiment

    try:
        parsed = read_experiment_config(config)
    except ExperimentError as err:
        fail(str(err))
    bars = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    )
    state: dict[str, Any] = {}

    def run_started(name: str, seed: int, index: int, total: int, steps: int) -> None:
        if "runs" not in state:
            state["runs"] = bars.add_task("runs", total=total, info="")
            state["steps"] = bars.add_task("", total=steps, info="")
            bars.start()
        bars.update(state["runs"], completed=index, info=f"{name}, seed {seed}")
        bars.update(state["steps"], description=f"{name} seed {seed}", completed=0, total=steps, info="")

    def on_log(record: dict[str, Any]) -> None:
        if "steps" not in state:
            return
        if record["kind"] in ("train", "end", "start"):
            info = f"loss {record['loss']['total']:.3f}" if record["kind"] == "train" else ""
            bars.update(state["steps"], completed=record["step"], info=info)

    def notify(message: str) -> None:
        bars.console.print(message, highlight=False, soft_wrap=True)

    try:
        results = run_experiment(
            parsed, out, ExperimentProgress(notify=notify, run_started=run_started, on_log=on_log), data_workers
        )
    except ExperimentError as err:
        bars.stop()
        fail(str(err))
    if "runs" in state:
        bars.update(state["runs"], completed=len(results["runs"]), info="done")
    bars.stop()
    console.print((out / "results.md").read_text(), markup=False, highlight=False)
    console.print(f"wrote {out / 'results.json'}, {out / 'results.md'} and {out / 'index.html'}", highlight=False)
