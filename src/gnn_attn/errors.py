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


def is_out_of_memory(err: BaseException) -> bool:
    """A CUDA or CPU allocation failure (torch raises ``OutOfMemoryError`` on GPUs and a
    ``RuntimeError`` naming the allocator on the CPU)."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def out_of_memory_error(err: BaseException, loader: str) -> UserError:
    """The one-line error for an allocation failure during training."""
    first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    if loader == "full":
        fix = (
            "the whole graph does not fit in memory at once: train on sampled mini-batches "
            "with data.loader=neighbor (and a smaller data.batch_size if needed)"
        )
    else:
        fix = "lower data.batch_size, data.num_neighbors or data.eval_batch_size"
    return UserError(f"out of memory ({first}); {fix}")
