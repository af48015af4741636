"""Errors that mean bad input, not a defect: a config field, a file or a data line.

Their messages name what is wrong and where; `launch.py` prints them as one
line without a traceback. Each is a `ValueError`, so code that catches those
keeps working.
"""


class UserError(ValueError):
    """Bad input given to a run: the message names the field, file or line."""


class ConfigError(UserError):
    """A config field has a value the run cannot use."""


class DataError(UserError):
    """A data file or one of its lines cannot be read as tasks."""


class MissingFile(UserError, FileNotFoundError):
    """A file or directory named by the config does not exist."""


class TrainingError(UserError):
    """The updates have collapsed or exploded; the message names the setting to change."""
