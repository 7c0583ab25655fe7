"""User-facing errors: the CLI prints their message on one line and exits with code 2 (no traceback)."""


class DreamkitError(Exception):
    """Bad input that the user can fix; ``str(err)`` names the problem and the fix."""

    exit_code = 2


class ConfigError(DreamkitError):
    """A config key, type, value or file is wrong."""
