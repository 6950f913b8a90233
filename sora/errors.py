"""One exception type for mistakes a user can fix; entry points print it as one line and exit 2."""


class UserError(Exception):
    """Bad input. The message names the fix; no traceback is shown for it."""
