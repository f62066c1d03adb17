"""The `isd` command: builds the parser from each subcommand's module and dispatches; nothing else."""

from __future__ import annotations

import sys

import torch

from isd import __version__
from isd.cli import bench, demo, evaluate, experiments, figures, train
from isd.cli.common import OneLineParser, run_guarded

COMMANDS = (train, demo, evaluate, experiments, figures, bench)  # each: register(subparsers) sets `handler`


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="isd", description="Self-supervised learning by Iterative Similarity Distillation "
                           "(ISD, ICCV 2021), with ISD+, asymmetric BYOL and MoCo-v2. Train an encoder on unlabeled "
                           "images, evaluate it (kNN, linear probe) and export the backbone.")
    parser.add_argument("--version", action="version", version=f"isd {__version__} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0 if args.command is None else 2
    return run_guarded(lambda: args.handler(args) or 0, f"isd {args.command}", args.flags.name)


if __name__ == "__main__":
    sys.exit(main())
