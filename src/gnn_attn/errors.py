"""User-facing errors: one line that names the problem and the fix, exit status 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user asked for (config, paths, data), not a bug.

    The entry points (``train.py``, ``eval.py``) print ``Error: <message>`` on one line to
    stderr and exit with status 2, without a traceback (``HYDRA_FULL_ERROR=1`` shows it).
    """

    exit_code = 2


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; ``metrics.json`` records the failure."""
