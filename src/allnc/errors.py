"""User-facing errors: one line that names the problem and the fix."""


class AllncError(Exception):
    """An error caused by the user's input (config, data, run directory).

    The command line prints ``str(err)`` on one line and exits with status 2,
    without a traceback.
    """


class ConfigError(AllncError):
    pass


class DataError(AllncError):
    pass


class RunDirError(AllncError):
    pass


class TrainingDiverged(AllncError):
    pass


class AllncWarning(UserWarning):
    """Something the user should know that does not stop the command (the command line
    prints it as one ``allnc: note:`` line)."""
