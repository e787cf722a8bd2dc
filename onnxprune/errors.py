"""The one exception type users see: a message meant for a person, no traceback."""


class OnnxPruneError(Exception):
    """Bad input or an impossible request. The CLI prints the message and exits non-zero."""
