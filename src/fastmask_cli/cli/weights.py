"""`fastmask weights`: what is shipped, how it was trained, what it measured."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from ..modeling.config import PRESETS
from .common import console, friendly_errors


def _percent(value: float | None) -> str:
    return "?" if value is None else f"{value * 100:.1f}"


@friendly_errors
def list_weights(
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """What weights are shipped, how they were trained, and what they measured."""
    from ..modeling.weights import read_manifest

    shipped = read_manifest()
    if json_out:
        typer.echo(json.dumps(shipped, indent=2))
        return
    if not shipped:
        console.print("No trained weights are shipped yet. Untrained presets: " + ", ".join(PRESETS) +
                      " (random neck and head; `--init` loads an ImageNet body).")
        return
    table = Table(title="shipped weights")
    for column in ("name", "default", "body", "streams", "AR@100 mask", "AR@100 box", "sha256"):
        table.add_column(column)
    for m in shipped:
        metrics = m.get("metrics", {})
        table.add_row(m["name"], "yes" if m.get("default") else "", m.get("config", {}).get("body", "?"),
                      str(m.get("config", {}).get("streams", "?")), _percent(metrics.get("segm", {}).get("AR@100")),
                      _percent(metrics.get("bbox", {}).get("AR@100")), m["sha256"][:12])
    console.print(table)
