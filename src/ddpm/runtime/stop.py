"""The process-wide stop request (SIGTERM / SIGINT): set by the signal handler, read by long loops.

Kept apart from the Lightning callback that installs the handler (`ddpm.training.preemption`) so that the
sampling pipeline can stop between batches without importing Lightning.
"""

from __future__ import annotations

import signal
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []  # signals received since `reset` (process-wide, as signals are)


def requested() -> int | None:
    """The signal that asked for a stop, or None."""
    return _received[0] if _received else None


def reset() -> None:
    _received.clear()


def handler(signum: int, frame: Any) -> None:
    """The first signal asks for a stop; a second of the same kind acts as if no handler were set."""
    if signum in _received:
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
        signal.raise_signal(signum)
        return
    _received.append(signum)
    print(f"\n{signal.Signals(signum).name} received: stopping after this step and saving last.ckpt "
          "(send it again to stop at once)", flush=True)


def adopt(signum: int) -> None:
    """A stop asked for by a signal another process received (DDP's ranks stop together): recorded as if this
    process had received it, unless it already holds one."""
    if not _received:
        _received.append(signum)


class Interrupted(Exception):
    """A run stopped on a signal with its state saved. `exit_code` = 128 + signal number."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; last.ckpt holds that step; "
                         "resume with ckpt_path=last (or the checkpoint's path)")
        self.exit_code = 128 + signum
