"""The `fastmask` command: a thin layer over the Python API (`fastmask_cli.propose_folder` and friends).

One module per command; common.py holds what they share. Commands are registered here, in the
order `fastmask --help` lists them.
"""

from . import bench, eval, export, merge, propose, train, weights
from .common import app

app.command("propose")(propose.propose)
app.command("merge")(merge.merge)
app.command("eval")(eval.eval_command)
app.command("weights")(weights.list_weights)
app.command("train")(train.train_command)
app.command("bench")(bench.bench_command)
app.command("export")(export.export_command)

__all__ = ["app"]
