"""The one exception type users see: a message meant for a person, no traceback."""


class OnnxPruneError(Exception):
    """Bad input or an impossible request. The CLI prints the message and exits non-zero."""


class InternalError(RuntimeError):
    """A self-check found a bug of ours: the model we built (from an input that passed the
    same checks) is invalid. Not the user's fault, so the CLI exits 3, not 2."""
