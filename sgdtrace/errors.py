"""The one error path: input problems are raised as a domain error with a clear message,
and turned into exit code 2 at the CLI edge."""


class SgdtraceError(Exception):
    """A problem with what the user asked for: one line, naming the value and what is allowed."""


class ConfigError(SgdtraceError):
    """A bad option, config file or combination of options."""


class DataError(SgdtraceError):
    """A data file or data set that cannot be used."""
