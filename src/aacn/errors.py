"""Errors a user can cause and fix.

Anything raised as :class:`UserError` (or a ``ValueError`` from argument validation) is caught once in
the CLI, printed as one line and turned into exit code 2. Set ``AACN_DEBUG=1`` to see the traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (arguments, files, environment) with a message that says how to fix it.

    ``all_ranks``: every rank of a distributed run raises the same error (e.g. a bad config), so the CLI prints
    it on rank 0 only instead of once per process.
    """

    def __init__(self, message: str, *, all_ranks: bool = False) -> None:
        super().__init__(message)
        self.all_ranks = all_ranks


class OptionError(UserError, ValueError):
    """A configuration option with a value no run can use; the message starts with the option's name.

    It is a ``ValueError`` too, so library callers (``create_model``, the config dataclasses) can catch what
    Python code conventionally raises for a bad argument. ``option`` is the option's flat name (``"kappa"``),
    which the CLI may map to its flag.
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


class Terminated(KeyboardInterrupt):
    """Training stopped on SIGTERM (after saving its checkpoint); the CLI exits with 143 (128 + SIGTERM), as a
    process killed by SIGTERM does, where Ctrl-C exits with 130."""
