"""The errors that mean "bad input": the lowest layer, so that the math can raise them without a framework.

Every entry point (train.py, eval.py, export.py through `ddpm.tasks.wrapper.task`) turns a `UserError` into one
line on stderr and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: printed as one line, with what to do, and the run exits with status 2."""


class ConfigError(UserError, ValueError):
    """The composed config can't produce a valid run."""


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced a NaN/inf loss; raised before the step is applied or checkpointed."""
