"""User-facing errors: the CLI prints their message without a traceback."""


class ClipCEError(Exception):
    """A problem the user can fix (bad input, missing file, invalid setting); the message says how."""


class ConfigError(ClipCEError, ValueError):
    """An invalid key or value in the configuration."""
