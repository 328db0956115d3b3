"""Errors that users see: each names the file, row, column, key or value at fault."""


class LungnetError(Exception):
    """Base class for every error lungnet raises on purpose (the CLI prints these without a traceback)."""


class DataError(LungnetError, ValueError):
    """Bad or missing input data: a file, a manifest column, a row, an image."""


class ConfigError(LungnetError, ValueError):
    """A configuration key or value that is unknown or out of range."""
