"""The one exception family for problems a user can fix (bad config, data row, checkpoint, ...).

Its message names the file, line, field or key and what to do; the CLI prints it as one line
instead of a traceback. Every module's user-facing error subclasses `UserError`.
"""


class UserError(ValueError):
    """A user-fixable problem; the message alone must tell what and where."""
