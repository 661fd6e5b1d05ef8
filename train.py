"""Train one model (or a sweep with -m): python train.py model=gatv2 data=cora"""

import os
import signal
import sys


def interrupted_while_starting(signum: int, frame: object) -> None:
    """Ctrl-C/SIGTERM while the libraries load: one line, no traceback. Nothing exists
    yet, so the process ends at once (an exception raised inside an import can leave a
    library half-initialised and fail loudly on the way out)."""
    print(f"Interrupted ({signal.Signals(signum).name}): nothing was started", file=sys.stderr)
    sys.stderr.flush()
    os._exit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, interrupted_while_starting)
    signal.signal(signal.SIGTERM, interrupted_while_starting)
    from gnn_attn.run import entry
    from gnn_attn.run.train import train

    entry.main(train, config_name="train")
