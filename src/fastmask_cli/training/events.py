"""What a training run reports while it runs (no torch here: the CLI subclasses it before a run starts)."""

from __future__ import annotations

from typing import Any


class TrainEvents:
    """Hooks the CLI uses to show progress; the defaults do nothing."""

    def note(self, message: str) -> None: ...
    def epoch_start(self, epoch: int, epochs: int, iterations: int) -> None: ...
    def step(self, metrics: dict[str, float]) -> None: ...
    def epoch_end(self, record: dict[str, Any]) -> None: ...
