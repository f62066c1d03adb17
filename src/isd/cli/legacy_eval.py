"""The original `eval_knn.py` / `eval_linear.py` flags, translated onto `isd knn` / `isd linear`.

Besides the table and JSON of `isd knn|linear`, each prints the result lines the original printed, which its
users parse, and appends them to the log file the original kept in --save (`knn.logs`, `logs`).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from isd.cli.common import TRUST_FLAG, OneLineParser, add_trust_flag, run_guarded
from isd.config import ARCHS, DATASETS
from isd.errors import UsageError
from isd.cli.evaluate import add_knn_args, add_linear_args, output_folder, run_knn, run_linear

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


def translate(script: str, args: argparse.Namespace) -> list[str]:
    """`isd knn|linear` arguments; values as --flag=VALUE and the paths after `--`, so a value that starts
    with '-' stays a value."""
    argv = [f"--dataset={args.dataset}", f"--batch-size={args.batch_size}", f"--num-workers={args.workers}"]
    argv += [f"--arch={args.arch}"] if args.arch else []
    argv += [f"--out={args.save}"] if args.save else []
    argv += [TRUST_FLAG] if args.trust_checkpoint_code else []
    if script == "eval_knn.py":
        argv += ["-k", *map(str, args.k)]
    else:
        argv += [f"--lr={args.lr!r}", f"--epochs={args.epochs}", f"--lr-schedule={args.lr_schedule}"]
    return argv + ["--", args.weights, args.data]


# `isd knn|linear` names in its messages -> the names this script's user typed
OWN_NAMES = {"--num-workers": "-j/--workers", "--batch-size": "-b/--batch-size", "--out": "--save",
             "--lr-schedule": "--lr_schedule", "CKPT": "--weights", "--arch": "-a/--arch"}


class OriginalLines:
    """Prints the original's result lines and appends them to the log file it kept in --save; a run's first line
    there is its options, as the original logged them."""

    def __init__(self, args: argparse.Namespace, translated: argparse.Namespace, script: str) -> None:
        self.args, self.translated, self.script = args, translated, script
        self.path: Path | None = None
        self.start = time.perf_counter()

    def __call__(self, line: str) -> None:
        print(line)
        if getattr(self.args, "debug", False):
            return
        try:
            if self.path is None:
                self.path = output_folder(self.translated) / LOG_FILES[self.script]
                self._append(f"{self.script} {self.args}")
            self._append(line)
        except OSError as err:
            raise UsageError(f"cannot write the log {self.path} ({err.strerror}); pass a writable --save") from None

    def _append(self, line: str) -> None:
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
    def run() -> int:
        args = legacy_parser(script).parse_args(argv)
        target = OneLineParser(prog=script)
        (add_knn_args if script == "eval_knn.py" else add_linear_args)(target)
        translated = target.parse_args(translate(script, args))
        lines = OriginalLines(args, translated, script)
        try:
            if script == "eval_knn.py":
                return run_knn(translated, on_result=lines.knn)
            return run_linear(translated, on_epoch=lines.linear_epoch)
        except UsageError as err:
            names = "|".join(re.escape(name) for name in OWN_NAMES)
            raise UsageError(re.sub(rf"(?<![\w-])({names})(?![\w-])", lambda m: OWN_NAMES[m[1]], str(err))) from None

    return run_guarded(run, script)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
