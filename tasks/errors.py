"""The pipeline's one error base: bad input, a bad setting or a store that stays down.

Its message already names the file, row, field, setting or store, so the CLIs print it as one line
and the terminal log shows it without a traceback (the Prefect UI keeps the full one).
"""


class PipelineError(Exception):
    """An expected failure whose message says what is wrong and where."""


class MissingInput(PipelineError, FileNotFoundError):
    """A stage's input is absent: the message names it and the stage that makes it."""
