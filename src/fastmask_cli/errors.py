"""The exception types the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations

from collections.abc import Callable


class FastMaskError(Exception):
    """A problem the user can fix (bad input, bad option, bad weights file): never a traceback."""


class ParameterError(FastMaskError, ValueError):
    """A bad value of a named parameter (or several) of the Python API.

    `template` holds `{0}` (or `{}` for a single parameter), `{1}` ... where the parameters' names go:
    the message names the parameters for a caller of the API (`top_k must be at least 1, not 0`), and
    the CLI puts its own flags there instead (`--top-k must be at least 1, not 0`; `cli.common.flag_of`).
    The places are replaced as text, not by `str.format`: values in the message (file names) may hold braces.
    """

    def __init__(self, parameters: str | tuple[str, ...], template: str) -> None:
        self.parameters = (parameters,) if isinstance(parameters, str) else tuple(parameters)
        self.template = template
        super().__init__(self.named(str))

    def __reduce__(self) -> tuple:  # rebuilt from its parts: it travels from worker processes (runs/jobs.py)
        return type(self), (self.parameters, self.template)

    def named(self, name: Callable[[str], str]) -> str:
        """The message with `name(parameter)` (a CLI flag, say) where each parameter's name stands."""
        message = self.template
        for i, parameter in enumerate(self.parameters):
            message = message.replace(f"{{{i}}}", name(parameter))
        return message.replace("{}", name(self.parameters[0])) if len(self.parameters) == 1 else message
