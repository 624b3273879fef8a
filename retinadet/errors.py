"""User-facing errors: the CLI prints these as one line, without a traceback."""


class RetinadetError(Exception):
    """An error caused by user input (a path, a flag, a file) that the user can fix."""


class ConfigError(RetinadetError):
    """An invalid model, data or training configuration."""


class DataError(RetinadetError):
    """A dataset, image or annotation problem; the message names the file and field."""


class CheckpointError(RetinadetError):
    """A weights file that is missing, corrupt, foreign or unsafe to load."""
