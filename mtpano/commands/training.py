"""`mtpano train`: fit BridgeNet on label stores, in one process or on Ray Train workers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mtpano.terminal import console, fail

# The validation table's columns: (figure, header, format) of the pooled figures.
VALIDATION_COLUMNS = (
    ("depth_absrel", "depth AbsRel", "{:.4f}"),
    ("depth_delta1", "depth δ1", "{:.1%}"),
    ("normals_mean_deg", "normals mean", "{:.2f}°"),
    ("normals_within_11_25", "normals <11.25°", "{:.1%}"),
    ("semantic_miou", "semantic mIoU", "{:.1%}"),
)


def validation_table(figures: dict[str, float], title: str) -> Table:
    """The pooled validation figures a run reports, as a small table (tasks it lacks left out)."""
    table = Table(title=title, title_justify="left")
    shown = [(name, header, fmt) for name, header, fmt in VALIDATION_COLUMNS if name in figures]
    for _, header, _ in shown:
        table.add_column(header, justify="right")
    table.add_row(*(fmt.format(figures[name]) if math.isfinite(figures[name]) else "-" for name, _, fmt in shown))
    return table


class TrainingDisplay:
    """Progress bar (step/total, loss per task, learning rate, samples/s, data wait, ETA) and a
    validation table after each validation, from the run's log records."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task: Any = None

    def __call__(self, record: dict[str, Any]) -> None:
        kind = record["kind"]
        if kind == "start":
            verb = "resuming at step" if record["resumed"] else "starting at step"
            console.print(
                f"{verb} {record['step']} of {record['steps']} on {record['workers']} worker(s), {record['device']}",
                highlight=False,
            )
            for note in record["notes"]:
                console.print(f"  {note}", highlight=False)
            self.task = self.progress.add_task("training", total=record["steps"], completed=record["step"], info="")
            self.progress.start()
        elif kind == "train" and self.task is not None:
            losses = record["loss"]
            parts = [f"loss {losses['total']:.3f}"] + [
                f"{name} {value:.3f}" for name, value in losses.items() if name in ("depth", "semantic", "normals")
            ]
            parts += [
                f"lr {record['lr']:.2e}",
                f"{record['samples_per_s']:.1f} pano/s",
                f"data wait {record['data_wait']:.0%}",
            ]
            self.progress.update(self.task, completed=record["step"], info=" · ".join(parts))
        elif kind == "val":
            best = record.get("best")
            title = f"validation at step {record['step']}" + (
                f" (best: step {best['step']}, {best['metric']} {best['value']:.4g})" if best else ""
            )
            self.progress.console.print(validation_table(record["figures"]["pooled"], title))
        elif kind == "end" and record.get("already_done"):
            self.progress.console.print(f"the run already reached step {record['step']}: nothing to do")
        elif kind == "skipped":
            self.progress.console.print(
                f"[yellow]skipped unreadable[/yellow] {', '.join(record['pano_ids'])} "
                f"({record['unreadable']} of {record['read']} so far)",
                soft_wrap=True,
            )

    def stop(self) -> None:
        self.progress.stop()


def train(
    stores: Annotated[list[str], typer.Argument(help="Label stores to train on (paths or fsspec URLs).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (created, or resumed when it exists).")],
    val: Annotated[
        list[str] | None,
        typer.Option("--val", help="Validation store (repeatable); default: --val-fraction of the training panoramas."),
    ] = None,
    preset: Annotated[str | None, typer.Option(help="Model and training preset: tiny | small | base | large.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="JSON or YAML file of TrainConfig fields (docs/training.md).")
    ] = None,
    tasks: Annotated[
        str | None, typer.Option(help="Comma-separated tasks to train (default: those the stores carry).")
    ] = None,
    height: Annotated[int | None, typer.Option(min=14, help="ERP height to train at (labels are resized).")] = None,
    batch: Annotated[int | None, typer.Option(min=1, help="Global batch (panoramas per step).")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Optimiser steps.")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="Peak learning rate (the encoder's is scaled).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the initialisation, data order and augmentations.")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Share held out for validation without --val.")] = None,
    val_every: Annotated[int | None, typer.Option(min=0, help="Validate every N steps (0: at the end).")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(min=1, help="Checkpoint every N steps.")] = None,
    keep: Annotated[int | None, typer.Option(min=1, help="Last checkpoints kept.")] = None,
    encoder_checkpoint: Annotated[
        str | None, typer.Option(help="transformers DINOv2 save_pretrained folder to start the encoder from.")
    ] = None,
    init: Annotated[str | None, typer.Option(help="A trained BridgeNet folder to fine-tune.")] = None,
    freeze_encoder: Annotated[bool | None, typer.Option(help="Keep the encoder fixed.")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Ray Train workers (one per GPU); default: one process, no Ray.")
    ] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster to join (with --workers).")] = None,
    data_workers: Annotated[int, typer.Option(min=0, help="DataLoader processes per training worker.")] = 2,
    device: Annotated[str | None, typer.Option(help="Torch device of a plain process (default: cuda if any).")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Torch threads per CPU training process.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a run folder made with another configuration.")] = False,
) -> None:
    """Train BridgeNet on label stores (pseudo-labels, imported ground truth or predictions).

    Rerunning the same command resumes from the run's last checkpoint. RUN holds train_config.json,
    metrics.jsonl, tensorboard/, checkpoints/, best/ and final/ (docs/training.md).

    Exit code 0 when training finished, 1 when it failed during the run, 2 for usage errors (nothing written).
    """
    from trainer.config import ConfigError, TrainOptions, resolve_config
    from trainer.data import DataError
    from trainer.runs import RunError
    from trainer.train import TrainError, fit, plan_run

    if address is not None and workers is None:
        raise typer.BadParameter("--address needs --workers", param_hint="--address")
    flags = {
        "tasks": tuple(t.strip() for t in tasks.split(",") if t.strip()) if tasks else None,
        "height": height,
        "batch_size": batch,
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "val_fraction": val_fraction,
        "val_every": val_every,
        "checkpoint_every": checkpoint_every,
        "keep": keep,
        "encoder_checkpoint": encoder_checkpoint,
        "init": init,
        "freeze_encoder": freeze_encoder,
    }
    options = TrainOptions(
        workers=workers, address=address, data_workers=data_workers, device=device, threads=threads, overwrite=overwrite
    )
    try:
        train_config = resolve_config(preset, config, flags)
        plan = plan_run(stores, val or [], out, train_config)
    except (ConfigError, DataError) as err:
        fail(str(err))
    display = TrainingDisplay()
    try:
        run = fit(plan, options, on_log=display)
    except (RunError, ConfigError) as err:
        display.stop()
        fail(str(err))
    except TrainError as err:
        display.stop()
        fail(str(err), code=1)
    except Exception as err:
        display.stop()
        cause = _train_error_cause(err)
        if cause is None:
            raise
        fail(cause, code=1)
    display.stop()
    best = run.best()
    described = (
        f"best {run.path / 'best'} (step {best['step']}, {best['metric']} {best['value']:.4g})"
        if best and best["metric"] != "final"
        else f"best {run.path / 'best'} (no validation: the final model)"
    )
    console.print(f"run {run.path}: {described}; final {run.path / 'final'}", soft_wrap=True, highlight=False)


def _train_error_cause(err: BaseException) -> str | None:
    """The message of a TrainError raised inside a Ray Train worker, or None for other errors."""
    from trainer.train import TrainError

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, TrainError):
            return str(seen)
        text = str(seen)
        if "TrainError: " in text:
            return text.split("TrainError: ", 1)[1].splitlines()[0]
        seen = seen.__cause__ or seen.__context__
    return None
