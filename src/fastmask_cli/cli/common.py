"""What every command shares: the app, the console, one-line errors, the options declared once,
progress columns, and the parsing of list-valued options."""

from __future__ import annotations

import functools
import inspect
import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .. import __version__
from ..errors import FastMaskError, ParameterError
from ..io.files import NoRoom

if TYPE_CHECKING:  # torch-backed modules are imported by the commands that run a model
    from ..inference.options import ProposerOptions
    from ..inference.proposer import Proposer
    from ..modeling.weights import ModelInfo

app = typer.Typer(
    help="FastMask: class-agnostic segment proposals for every object in an image, in one shot.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # docstrings and help are Markdown: a paragraph's line breaks in the source are not line breaks on screen
    rich_markup_mode="markdown",
)
console = Console(stderr=True)


# The API's parameter names whose flags are not `--` + the name with dashes.
FLAGS = {"json_out": "--json", "fmt": "--format", "path": "--onnx", "iou_types": "--iou-type", "warmup_iters": "--warmup"}


def flag_of(parameter: str) -> str:
    """The CLI flag of a Python API parameter (`top_k` -> `--top-k`)."""
    return FLAGS.get(parameter, "--" + parameter.replace("_", "-"))


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every failure into one line and a non-zero exit; FASTMASK_DEBUG=1 shows the traceback."""

    resumable = "resume" in inspect.signature(command).parameters  # where a full disk's message says --resume

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FastMaskError as exc:
            message = exc.named(flag_of) if isinstance(exc, ParameterError) else str(exc)
            if isinstance(exc, NoRoom) and resumable:
                message += ": make room, then rerun with --resume to continue"
            console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted.[/] Finished work is kept; rerun with --resume to continue.")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the promise is: never a traceback
            if os.environ.get("FASTMASK_DEBUG"):
                raise
            if isinstance(exc, OSError) and exc.filename:  # a path the user named (permissions, disk full): not our bug
                console.print(f"[bold red]Error:[/] {escape(exc.strerror or type(exc).__name__)}: {escape(str(exc.filename))}",
                              highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
            first = str(exc).splitlines()[0] if str(exc) else ""
            console.print(f"[bold red]Internal error:[/] {type(exc).__name__}: {first} (FASTMASK_DEBUG=1 shows the traceback)", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fastmask {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """FastMask: class-agnostic segment proposals for every object in an image, in one shot."""


def warn_if_untrained(info: ModelInfo) -> None:
    if not info.trained:
        console.print(
            Panel(
                f"{info.describe()}.\nNo trained weights are in use: scores and masks are RANDOM, not object proposals.\n"
                "Pass --weights with a trained fastmask checkpoint to get real proposals.",
                title="untrained model",
                border_style="bold red",
            )
        )
    else:
        console.print(f"weights: {info.describe()}", highlight=False)
    if info.body_init:
        console.print(f"body: {info.body_init.summary()}", highlight=False)


def load_proposer(weights: str | None, init: Path | None, options: "ProposerOptions") -> tuple["Proposer", "ModelInfo"]:
    """The model `weights` names (`load_model`) proposing with `options`; its notes said."""
    from ..inference.proposer import Proposer
    from ..modeling.weights import load_model

    model, info = load_model(weights, init)
    proposer = Proposer(model, options)
    for note in proposer.notes:
        say_note(note)
    return proposer, info

def progress_columns(description: str = "[progress.description]{task.description}", after: tuple = (),
                     remaining: bool = True) -> tuple:
    """The columns of every progress bar: what runs, the bar, done of total, `after` (a column of
    the task's fields, say), the time elapsed and, with `remaining`, the time left."""
    return (TextColumn(description), BarColumn(), MofNCompleteColumn(), *after, TimeElapsedColumn(),
            *((TimeRemainingColumn(),) if remaining else ()))


# Seconds between progress lines where the output is not a terminal (a batch job's log); 0: a line per step.
def _interval(text: str | None, default: float = 30.0) -> float:
    try:
        return max(float(text), 0.0) if text else default
    except ValueError:  # a typo in the environment must not break every command
        return default


PROGRESS_INTERVAL = _interval(os.environ.get("FASTMASK_PROGRESS_INTERVAL"))


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


class LineProgress:
    """Progress as plain lines, at most one every `interval` seconds and one when a task ends, for output
    that is not a terminal (a Slurm job's log, nohup), where a bar would print nothing until the end:
    what runs, done of total, seconds per step and the time left, as detectron2's inference logger
    prints. The part of rich's `Progress` the commands use."""

    def __init__(self, console: Console, interval: float | None = None, disable: bool = False) -> None:
        self.console, self.disable = console, disable
        self.interval = PROGRESS_INTERVAL if interval is None else interval
        self.tasks: list[dict[str, Any]] = []

    @property
    def task_ids(self) -> list[int]:
        return list(range(len(self.tasks)))

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        now = time.monotonic()
        self.tasks.append({"description": description, "total": total, "done": 0, "fields": fields, "start": now,
                           "printed": now, "finished": False})
        return len(self.tasks) - 1

    def update(self, task: int, advance: float = 0, description: str | None = None, total: float | None = None,
               **fields: Any) -> None:
        t = self.tasks[task]
        t["done"] += advance
        t["description"] = description or t["description"]
        t["total"] = total if total is not None else t["total"]
        t["fields"].update(fields)
        now = time.monotonic()
        if t["total"] is not None and t["done"] >= t["total"]:
            self._print(t, now)
            t["finished"] = True
        elif now - t["printed"] >= self.interval:
            self._print(t, now)

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def _print(self, t: dict[str, Any], now: float) -> None:
        t["printed"] = now
        if self.disable or t["finished"] or not t["done"]:
            return
        per_step = (now - t["start"]) / t["done"]
        line = f"{t['description']}: {_count(t['done'])}" + (f"/{_count(t['total'])}" if t["total"] else "")
        line += f", {per_step:.3g} s each, {timedelta(seconds=round(now - t['start']))} elapsed"
        if t["total"] and t["done"] < t["total"]:
            line += f", {timedelta(seconds=round(per_step * (t['total'] - t['done'])))} left"
        extra = " ".join(str(v) for v in t["fields"].values() if v)
        self.console.print(line + (f", {extra}" if extra else ""), highlight=False, markup=False, soft_wrap=True)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        now = time.monotonic()
        for t in self.tasks:
            self._print(t, now)
            t["finished"] = True

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_progress(*columns: Any, console: Console, transient: bool = False, disable: bool = False) -> Progress | LineProgress:
    """A progress bar on a terminal; elsewhere (a file, a pipe) plain lines at a steady interval (`LineProgress`)."""
    if console.is_terminal:
        return Progress(*columns, console=console, transient=transient, disable=disable)
    return LineProgress(console, disable=disable)


def say_note(message: str, on: Console | None = None) -> None:
    """A note the user should read, in yellow, on `on` (default: the commands' stderr console; a progress
    display's own console prints it above the bar). The message is text, never markup."""
    (on or console).print(f"[yellow]note:[/] {escape(message)}", highlight=False)


def int_list(text: str, option: str, example: str = "100,1000", too_low: str = "must be at least 1") -> list[int]:
    """'100' or '100,1000' -> [100] or [100, 1000]: a list-valued option, each value at least 1."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FastMaskError(f"{option} must be a number or a list such as {example}, not {text!r}") from None
    if not values or min(values) < 1:
        raise FastMaskError(f"{option} {too_low}")
    return values


def float_list(text: str, option: str, example: str = "0.3,0.4") -> list[float]:
    """'0.3' or '0.3,0.4' -> [0.3] or [0.3, 0.4]: a list of numbers (their range is the API's to check)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FastMaskError(f"{option} must be a number or a list such as {example}, not {text!r}") from None
    return values


def parse_size(text: str) -> tuple[int, int]:
    """'800x600' -> (800, 600) as width, height."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise FastMaskError(f"--size must be WIDTHxHEIGHT such as 800x600, not {text!r}") from None
    if min(width, height) < 32:
        raise FastMaskError(f"--size {text} is too small (at least 32 px a side)")
    return width, height


def pair(text: str, option: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise FastMaskError(f"{option} must be two numbers LOW,HIGH such as 0.5,1.25, not {text!r}") from None
    return low, high


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' (1-based) -> (K, N)."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise FastMaskError(f"--shard must be K/N such as 1/4, not {text!r}") from None
    if not 1 <= k <= n:
        raise FastMaskError(f"--shard {text}: K must be between 1 and N")
    return k, n


def command_line(ctx: typer.Context) -> str:
    """The command as it ran, from the options typer parsed (JSON records say what produced them)."""
    words = ["fastmask", ctx.info_name or ""]
    for key, value in ctx.params.items():
        flag = flag_of(key)
        if value is True:
            words.append(flag)
        elif value not in (None, False):
            words += [flag, str(value)]
    return " ".join(words)


