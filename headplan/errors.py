"""UserError: bad input the user can fix. The CLI prints it as one line on stderr and exits with status 2."""


class UserError(Exception):
    """A problem with the user's input (sizes, names, files, budgets): one readable line, no traceback."""

    exit_code = 2
