"""The one error type a step raises for problems a person must fix (bad input, bad config)."""


class StepError(Exception):
    """A failure the user can act on; the CLI prints it as one line and exits non-zero.

    Raise it with a message that names what is wrong and where (file, row, column),
    never with a traceback's worth of context.
    """
