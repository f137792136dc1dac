"""The one exception type users see: its message is a single line meant for humans."""


class DepViewError(Exception):
    """A user-facing error (bad spec, bad input, failing forward, impossible prune)."""
