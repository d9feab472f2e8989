"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class FastMaskError(Exception):
    """A problem the user can fix (bad input, bad option, bad weights file): never a traceback."""
