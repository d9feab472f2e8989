"""Running the `fastmask` CLI in-process, with output flattened for comparison."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from fastmask_cli.cli import app

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    # rich wraps lines at the terminal width and draws tables: compare words only
    result.flat = " ".join(re.sub(r"[\u2500-\u257f]", " ", result.output).split())
    assert "Traceback" not in result.output
    return result


def propose(folder, out, checkpoint, *extra):
    return run("propose", folder, "--out", out, "--weights", checkpoint, "--size", "128", "--top-k", "10", *extra)
