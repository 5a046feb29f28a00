"""What every command shares for talking to a person: the stderr console, progress bars,
one-line errors."""

from __future__ import annotations

import time
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

# Progress, notes and errors go to stderr; tables and --json to stdout, so they can be piped.
console = Console(stderr=True)


def progress() -> Progress:
    """A progress display on stderr: description, bar, done/total, a `rate` field, ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
    )


def stdout_console() -> Console:
    """Standard output; as wide as the terminal, or wide enough for any table when piped."""
    out = Console()
    return out if out.is_terminal else Console(width=250)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `error: message` as one line on stderr and exit with `code` (2: usage error)."""
    console.print(f"[red]error:[/red] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


class PanoramaProgress:
    """The progress bar of a command that works through panoramas one by one (`labels`,
    `predict`, `import`): `on_start` and `on_result` are the callbacks their drivers take.

    Args:
        doing: the bar's description, e.g. "labelling".
        done: what a finished panorama is, e.g. "labelled".
    """

    def __init__(self, doing: str, done: str) -> None:
        self.doing, self.done = doing, done
        self.bars = progress()
        self.started = 0.0
        self.task: TaskID | None = None

    def on_start(self, todo: int, done: int) -> None:
        if done:
            console.print(f"resuming: {done} panoramas already {self.done}, {todo} to go")
        self.started = time.perf_counter()
        self.task = self.bars.add_task(self.doing, total=todo, rate="")
        self.bars.start()

    def on_result(self, result: dict[str, Any]) -> None:
        """Advance by one finished panorama (its result row: pano_id, status, error, ...);
        a failure is printed above the bar."""
        assert self.task is not None, "on_start comes first"
        if result["status"] != "ok":
            self.bars.console.print(
                f"[red]failed[/red] {result['pano_id']}: {result['error']}", soft_wrap=True, highlight=False
            )
        done = self.bars.tasks[0].completed + 1
        rate = done / max(time.perf_counter() - self.started, 1e-9)
        self.bars.update(self.task, advance=1, rate=f"{rate:.2f} pano/s")

    def stop(self) -> None:
        self.bars.stop()

    def print_summary(
        self, out: str, total: int, failed: int, now: int, seconds: float, done_before: int, detail: str = ""
    ) -> None:
        """The run's closing line: `TOTAL panoramas in OUT[ (DETAIL)]: N ok, F failed (NOW <done>
        now in S s, R pano/s; D were done before)`."""
        rate = now / seconds if seconds > 0 else 0.0
        console.print(
            f"{total} panoramas in {out}{f' ({detail})' if detail else ''}: {total - failed} ok, {failed} failed "
            f"({now} {self.done} now in {seconds:.1f} s, {rate:.2f} pano/s; {done_before} were done before)",
            soft_wrap=True,
            highlight=False,
        )

    @staticmethod
    def print_failed(failed: list[tuple[str, str]]) -> None:
        """List the failed panoramas (pano_id, error) of a run's store, one a line."""
        if failed:
            console.print("failed panoramas:")
            for pano_id, error in failed:
                console.print(f"  {pano_id}: {error}", soft_wrap=True, markup=False)
