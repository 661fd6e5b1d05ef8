"""User-facing errors: one line that names the problem and the fix, exit status 2.

The lowest layer of the package: every entry point (``train.py`` and ``eval.py``
through :mod:`gnn_attn.run.entry`, the aggregator, the benchmarks) ends in
:func:`exits_cleanly`, which turns a :class:`UserError` into that line.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """A problem with what the user asked for (config, paths, data), not a bug.

    The entry points (``train.py``, ``eval.py``) print ``Error: <message>`` on one line to
    stderr and exit with status 2, without a traceback (``HYDRA_FULL_ERROR=1`` shows it).
    """

    exit_code = 2


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM, raised where the program is when it arrives (see
    :func:`interrupt_on_signals`); the message says what was saved. A ``BaseException``
    that is not a ``KeyboardInterrupt``: ``except Exception`` (a picture's safety net)
    does not swallow it, and Lightning re-raises it instead of exiting with status 1."""

    def __init__(self, signum: int, message: str = "nothing was started") -> None:
        self.signum = signum
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


def interrupt_on_signals() -> None:
    """From now on, SIGINT and SIGTERM raise :class:`Interrupted` wherever the program
    is (training replaces this with a graceful stop at the end of the epoch). In a
    submitit job SIGTERM stays submitit's (it ignores it: SLURM sends it at preemption,
    and the job checkpoints on submitit's own signal instead)."""

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    signals = [signal.SIGINT] if os.environ.get("SUBMITIT_EXECUTOR") else [
        signal.SIGINT, signal.SIGTERM
    ]  # fmt: skip
    for sig in signals:
        signal.signal(sig, handler)


@contextmanager
def exits_cleanly() -> Iterator[None]:
    """Run the body of an entry point: a :class:`UserError` becomes ``Error: <message>``
    on stderr and its exit status (2); an :class:`Interrupted` (or Ctrl-C) one line with
    what was saved and status 128 + signal (130 for Ctrl-C, 143 for SIGTERM); no
    traceback (``HYDRA_FULL_ERROR=1`` shows it)."""
    try:
        yield
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except Interrupted as err:
        print(f"Interrupted ({err.signal_name}): {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print("Interrupted (SIGINT): nothing was started", file=sys.stderr)
        sys.exit(130)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; ``metrics.json`` records the failure."""


def user_error_in(err: BaseException) -> UserError | None:
    """The :class:`UserError` behind ``err`` (Hydra's ``instantiate`` wraps what a
    constructor raises in an ``InstantiationException``), or None."""
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, UserError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def is_out_of_memory(err: BaseException) -> bool:
    """A CUDA or CPU allocation failure (torch raises ``OutOfMemoryError`` on GPUs and a
    ``RuntimeError`` naming the allocator on the CPU), also when wrapped (Hydra's
    ``instantiate`` re-raises with the original as the cause)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = str(err)
        if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
            return True
        if "out of memory" in text.lower() or "can't allocate memory" in text:
            return True
        err = err.__cause__ or err.__context__
    return False


def out_of_memory_error(err: BaseException, loader: str) -> UserError:
    """The one-line error for an allocation failure during a run."""
    text = " ".join(str(err).split())
    match = re.search(r"tried to allocate (\d+) bytes", text)
    if match:
        what = f"could not allocate {int(match.group(1)) / 2**20:,.0f} MiB"
    else:
        what = text[:120] or type(err).__name__
    if loader == "full":
        fix = (
            "the whole graph (or the model) does not fit at once: train on sampled "
            "mini-batches with data.loader=neighbor, or make the model smaller"
        )
    else:
        fix = "lower data.batch_size, data.num_neighbors or data.eval_batch_size"
    return UserError(f"out of memory ({what}); {fix}")
