"""Where a run reports: console (tqdm), TensorBoard and a JSONL file in the run folder. Rank 0 only."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool = True, console=print) -> None:
        self.enabled, self.console = enabled, console
        self.jsonl = open(run_dir / "log.jsonl", "a") if enabled else None
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # tensorboard is optional at run time
                self.tb = None

    def record(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if self.jsonl is None:  # not rank 0
            return
        row = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(f"{kind}/{name}", value, step)

    def say(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message) if tqdm._instances else self.console(message)

    def progress(self, total: int, desc: str, initial: int = 0):
        return tqdm(total=total, initial=initial, desc=desc, disable=not self.enabled, dynamic_ncols=True,
                    leave=False, mininterval=1.0)

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
