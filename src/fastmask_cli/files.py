"""Atomic file writing: a reader never sees a half-written file, whatever interrupts the writer."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import FastMaskError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def writable_folder(folder: Path, what: str) -> Path:
    """Make `folder` (and its parents) and check that files can be created in it, before any work is
    done; a FastMaskError naming it (`what` says what it is for) otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".fastmask-write-test.{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise FastMaskError(f"cannot write {what} in {folder}: {reason}") from None
    return folder


def write_json_atomic(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file; a missing or malformed file is a one-line FastMaskError naming `what` it is."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FastMaskError(f"{what} not found: {path}") from None
    except (ValueError, UnicodeDecodeError):
        raise FastMaskError(f"{what} {path} is not JSON") from None
    except OSError as exc:
        raise FastMaskError(f"cannot read {what} {path}: {exc.strerror}") from None
