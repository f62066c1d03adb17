"""The original `eval_knn.py` / `eval_linear.py` flags, translated into the settings of `isd knn` / `isd linear`.

Besides the table and JSON of `isd knn|linear`, each prints the result lines the original printed, which its
users parse, and appends them to the log file the original kept in --save (`knn.logs`, `logs`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from isd.cli.common import Flags, OneLineParser, add_trust_flag, run_guarded
from isd.config import ARCHS, DATASETS
from isd.errors import SettingError
from isd.eval.protocols import Evaluation, knn_report, linear_report, output_folder

SCRIPTS = {"eval_knn.py": ("kNN accuracy (1-NN, 20-NN)", "isd knn"),
           "eval_linear.py": ("the linear probe (40 epochs, lr 0.01, steps at 15,30,40)", "isd linear")}
LOG_FILES = {"eval_knn.py": "knn.logs", "eval_linear.py": "logs"}  # the original's names, inside --save


def legacy_parser(script: str) -> argparse.ArgumentParser:
    what, command = SCRIPTS[script]
    p = OneLineParser(prog=script, description=f"Evaluate a checkpoint: {what}, with the original script's flags; "
                      f"runs `{command}`.")
    p.add_argument("data", help="dataset root holding train/ and val/ (<class>/<image>)")
    p.add_argument("--weights", required=True, help="checkpoint (ours, the original code's, or a plain state_dict)")
    p.add_argument("-a", "--arch", choices=ARCHS, help="checked against the checkpoint's weights")
    p.add_argument("--save", help="folder for results and cached features (default: the checkpoint's folder)")
    p.add_argument("-b", "--batch-size", type=int, default=256, help="batch size (default 256)")
    p.add_argument("-j", "--workers", type=int, default=4, help="data loading workers (default 4)")
    p.add_argument("--dataset", choices=DATASETS, default="folder", help="data source (default: folder)")
    p.add_argument("--load_cache", action="store_true", help="accepted for compatibility: cached features are "
                   "reused whenever the checkpoint file is unchanged")
    p.add_argument("-p", "--print-freq", type=int, help="accepted for compatibility (no effect)")
    p.add_argument("--gpu", type=int, help="accepted for compatibility; use CUDA_VISIBLE_DEVICES instead")
    add_trust_flag(p, "--weights")
    if script == "eval_knn.py":
        p.add_argument("-k", type=int, nargs="+", default=[1, 20], help="neighbour counts (default 1 20)")
        p.add_argument("--debug", action="store_true", help="as the original: no log file in --save")
    else:
        p.add_argument("--lr", type=float, default=0.01, help="default 0.01")
        p.add_argument("--epochs", type=int, default=40, help="default 40")
        p.add_argument("--lr_schedule", default="15,30,40", help="epochs where lr *= 0.1 (default '15,30,40')")
    return p


def flags(parser: argparse.ArgumentParser) -> Flags:
    """The original flags as settings of isd.eval.protocols.Evaluation, and back in its errors."""
    return Flags(parser, keys={"weights": "ckpt", "save": "out", "workers": "num_workers"},
                 ignored=("load_cache", "print_freq", "gpu", "debug"))


class OriginalLines:
    """Prints the original's result lines and appends them to the log file it kept in --save; a run's first line
    there is its options, as the original logged them."""

    def __init__(self, args: argparse.Namespace, ev: Evaluation, script: str) -> None:
        self.args, self.ev, self.script = args, ev, script
        self.path: Path | None = None
        self.start = time.perf_counter()

    def __call__(self, line: str) -> None:
        print(line)
        if getattr(self.args, "debug", False):
            return
        try:
            if self.path is None:
                self.path = output_folder(self.ev) / LOG_FILES[self.script]
                self._append(f"{self.script} {self.args}")
            self._append(line)
        except OSError as err:
            raise SettingError("cannot write the log {path} ({why}); pass a writable {out}", path=self.path,
                               why=err.strerror) from None

    def _append(self, line: str) -> None:
        assert self.path is not None
        with open(self.path, "a", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(line + "\n")

    def knn(self, report: dict) -> None:
        for k, acc in report["top1"].items():
            self(k)
            self(f"=> time : {time.perf_counter() - self.start:.2f}s")
            self(f" * Acc {acc:.2f}")

    def linear_epoch(self, row: dict) -> None:
        self(f" * Acc@1 {row['top1']:.3f} Acc@5 {row['top5']:.3f}")


def main(script: str, argv: list[str] | None = None) -> int:
    parser = legacy_parser(script)
    translation = flags(parser)

    def run() -> int:
        args = parser.parse_args(argv)
        ev = Evaluation(**translation.values(args))
        lines = OriginalLines(args, ev, script)
        if script == "eval_knn.py":
            knn_report(ev, on_result=lines.knn)
        else:
            linear_report(ev, on_epoch=lines.linear_epoch)
        return 0

    return run_guarded(run, script, translation.name)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
