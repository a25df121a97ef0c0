"""The one exception type for mistakes a user can fix (bad config, bad data, missing file).

Entry points catch it, print its message on one line and exit with code 2; everything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """A problem in the user's input; the message names the file, key or field at fault."""
