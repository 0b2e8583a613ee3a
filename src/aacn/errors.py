"""Errors a user can cause and fix.

Anything raised as :class:`UserError` (or a ``ValueError`` from argument validation) is caught once in
the CLI, printed as one line and turned into exit code 2. Set ``AACN_DEBUG=1`` to see the traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (arguments, files, environment) with a message that says how to fix it."""
