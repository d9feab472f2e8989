"""The partial log: finished images appended as JSON lines to `<out>.partial` while a run goes, after a
header recording what the run depends on; what makes a run resumable after a crash or Ctrl-C."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from ..io.files import room_for

PARTIAL_FORMAT = "fastmask-partial-2"


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


@dataclass
class Done:
    """Where a finished image's record lies in the partial log: all a run keeps of it in memory."""

    offset: int
    length: int
    image_id: Any  # the id it was given: a resume checks that the image still has it


class PartialLog:
    """The JSON-lines log of finished images that makes a run resumable, and its index: finished
    images (`done`), skipped ones and why (`skipped`), and per-image notes (`notes`)."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header
        self.done: dict[str, Done] = {}
        self.skipped: dict[str, str] = {}
        self.notes: list[tuple[str, str]] = []

    def load(self) -> None:
        """Index an earlier run with the same settings; the file is cut after its last whole line."""
        offset = 0
        with open(self.path, "rb") as f:
            for n, line in enumerate(f):
                try:
                    record = json.loads(line)
                except ValueError:
                    break  # the line being written when the run was killed
                if not line.endswith(b"\n"):
                    break
                if n == 0:
                    if record != self.header:
                        raise ParameterError("resume", f"{self.path} was written with other settings, weights or "
                                             "images; run without {} to start over")
                else:
                    self._index(record, offset, len(line))
                offset += len(line)
        if offset == 0:
            raise ParameterError("resume", f"{self.path} is not a fastmask partial run; run without {{}} to start over")
        with open(self.path, "r+b") as f:
            f.truncate(offset)

    def _index(self, record: dict, offset: int, length: int) -> None:
        rel = record["file"]
        if "skipped" in record:
            self.skipped[rel] = record["skipped"]
            return
        self.done[rel] = Done(offset, length, record["image_id"])
        if record.get("note"):
            self.notes.append((rel, record["note"]))

    def check_ids(self, ids: dict[str, Any]) -> None:
        """Refuse to resume where a finished image's id is not the one it has now (`ids`: file -> id): images
        were added or removed before it, and two files would share an id. A finished image that is gone
        is left out, as a new run would leave it."""
        moved = next((rel for rel, done in self.done.items() if rel in ids and ids[rel] != done.image_id), None)
        if moved is not None:
            raise ParameterError("resume", f"the images changed since {self.path} was written: {moved} was given "
                                 f"image id {self.done[moved].image_id!r} and would now be {ids[moved]!r} (images were "
                                 "added or removed before it); run without {} to start over")

    def resume(self, ids: dict[str, Any]) -> bool:
        """Index the log an interrupted run left, checked against the images' ids now (`load`, `check_ids`);
        False where there is none."""
        if not self.path.exists():
            return False
        self.load()
        self.check_ids(ids)
        return True

    def todo(self, files: list[str]) -> list[str]:
        """Those of `files` that the log holds neither as finished nor as skipped."""
        return [f for f in files if f not in self.done and f not in self.skipped]

    def start(self) -> None:
        with room_for(self.path), open(self.path, "w") as f:
            f.write(json.dumps(self.header) + "\n")

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with room_for(self.path), open(self.path, "ab") as f:
            offset = f.tell()
            f.write(line)
            f.flush()
        self._index(record, offset, len(line))

    def records(self, files: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        """(file, record) of each finished image among `files`, in that order, read one at a time."""
        with open(self.path, "rb") as f:
            for rel in files:
                entry = self.done.get(rel)
                if entry is not None:
                    f.seek(entry.offset)
                    yield rel, json.loads(f.read(entry.length))
