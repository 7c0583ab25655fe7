"""User-facing errors: the CLI prints their message on one line and exits with code 2 (no traceback)."""


class DreamkitError(Exception):
    """Bad input that the user can fix; ``str(err)`` names the problem and the fix."""

    exit_code = 2
    #: what the CLI prints before the message
    prefix = "error: "


class ConfigError(DreamkitError):
    """A config key, type, value or file is wrong."""


class Interrupted(DreamkitError):
    """A fit stopped by SIGINT / SIGTERM after writing a checkpoint; exit code 128 + the signal (130, 143)."""

    prefix = ""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class TrainingDiverged(DreamkitError):
    """The loss stayed non-finite for ``trainer.nonfinite_patience`` steps; exit code 3."""

    exit_code = 3


class EmptyExport(DreamkitError, ValueError):
    """A representation with nothing to mesh (all transparent, or the threshold above every density)."""
