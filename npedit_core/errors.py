"""User-facing errors.

Everything that a user can cause (a bad image tensor, an unknown edit type, a missing or corrupt
checkpoint) raises `NPEditError` with a message that names the offending input, file or key, so the
ComfyUI nodes and the CLI can show it as one line instead of a traceback from deep inside torch.
"""


class NPEditError(ValueError):
    """Bad input: the message names the input, file, key or row and says what was expected."""


class CheckpointError(NPEditError):
    """A checkpoint file or folder is missing, unreadable or does not fit the model it is loaded into."""


class DataError(NPEditError):
    """A training image or row cannot be read at batch time (the message names the file and row)."""
