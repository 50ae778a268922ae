"""The one exception type a user of forgetkit is expected to read.

Every check on user input (paths, class names, configs, checkpoints) raises :class:`ForgetkitError` with a single
sentence that names the problem and how to fix it. The CLI prints it as ``error: ...`` and exits with status 2,
without a traceback; anything else is a bug in forgetkit and keeps its traceback.
"""


class ForgetkitError(Exception):
    """A problem with the user's input, data or files, with a message that says how to fix it."""


BUDGET_HINT = "try a larger budget (-o train.steps=600) or, if retained classes fell, more replay images"
"""the advice for a forget request that missed its goal, shared by the forget kind (requests/forget.py) and the
methods that say more (Method.fix_hint)"""
