"""The one exception type of the distillation tools: bad input the user can fix.

Every message says what is wrong (naming the file, the expected and the found value) and how to
fix it; the CLI prints it without a traceback and exits with status 2.
"""


class DistillError(ValueError):
    """Bad input to the distillation tools (store, dataset, teacher, arguments)."""


class StoreError(DistillError):
    """A logit store that is missing, truncated, corrupted or does not match the request."""
