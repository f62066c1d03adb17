"""SIGTERM / SIGINT / SIGUSR1 ask the run to stop at the end of the current step, after a checkpoint.

With several processes, any rank's signal stops every rank at the same step: each step all-reduces the
flag of the step before on a side gloo group, asynchronously, so no step waits for it.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch
import torch.distributed as dist

from isd.runtime import SIGNALS


class StopRequests:
    def __init__(self, world: int = 1) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._group: Any = dist.new_group(backend="gloo") if world > 1 else None
        self._flag = torch.zeros(1)
        self._pending: Any = None  # the all-reduce in flight (a torch.distributed Work)

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._pending is not None:
            self._pending.wait()  # leave no collective in flight on the side group
            self._pending = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a stop request on another rank"

    def should_stop(self) -> bool:
        """Called once per step on every rank; all ranks get the same answer at the same step."""
        if self._group is None:
            return self.signum is not None
        if self._pending is not None:
            self._pending.wait()
            self._pending = None
            if self._flag.item() > 0:
                return True  # every rank learns it at this step: none posts another all-reduce
        self._flag.fill_(1.0 if self.signum is not None else 0.0)
        self._pending = dist.all_reduce(self._flag, group=self._group, async_op=True)
        return False

    def leave_together(self) -> None:
        """At the end of a run, finished or stopped by agreement, once rank 0's checkpoint is written: each rank
        waits for the others, so that none exits (and closes its connections) while another still writes or talks
        to it."""
        if self._group is not None:
            dist.barrier(group=self._group)
