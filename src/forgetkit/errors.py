"""The one exception type a user of forgetkit is expected to read.

Every check on user input (paths, class names, configs, checkpoints) raises :class:`ForgetkitError` with a single
sentence that names the problem and how to fix it. The CLI prints it as ``error: ...`` and exits with status 2,
without a traceback; anything else is a bug in forgetkit and keeps its traceback.
"""


class ForgetkitError(Exception):
    """A problem with the user's input, data or files, with a message that says how to fix it."""
