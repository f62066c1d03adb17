"""Property-based fuzz of every command line: any value is either accepted or one error line (exit 2), never a traceback.

Each example builds a command line from the real parsers (every flag of `isd train`, `--set KEY=VALUE` over every
config key, `isd knn|linear|export|recipes|demo`, and the original scripts train_isd.py, train_isd_plus.py,
train_byol.py, eval_knn.py, eval_linear.py), fills it with hostile values (negative, zero, huge, NaN/inf, empty,
unicode, line breaks, '=' and ',', paths that are too long or lie under a file or in /proc) mixed with valid ones,
and runs the entry function in-process. Nothing trains: the compute entries (`isd.train.loop.train`, feature
extraction, built-in data sets, the demo) are replaced by stand-ins that raise a sentinel, so a command whose
values all pass every check counts as accepted. Before that, the training and feature stand-ins hand the accepted
values to what a real run hands them first (seeded generators, SGD, the LR schedule, the queue's shape): a value
the checks let through but those reject (a traceback in a real run) fails the test. The property, per example:

    exit code 2 with exactly one non-empty line on stderr, or accepted (exit 0 / the sentinel reached);
    and never 'Traceback' on stdout or stderr, nor an exception escaping the entry function.

stdout and stderr are text streams over bytes with the encodings of a real terminal (stdout strict UTF-8, stderr
backslashreplace), so a value that cannot be printed is found too. Hypothesis runs derandomized with a fixed
number of examples; the last test checks that every command line had examples accepted and refused, and prints
how many were tried (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import io
import os
from collections import Counter, defaultdict
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_image_folder

# ------------------------------------------------------------------------------------------------- the harness


class WouldCompute(Exception):
    """Raised where the command would start real work: its values passed every check."""


COUNTS: Counter = Counter()  # examples per command and outcomes, printed by the last test
DISTINCT: set = set()  # the distinct command lines among them
OUTCOMES: defaultdict = defaultdict(set)  # command -> the outcomes its examples reached

SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def _stream(errors: str) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors=errors, newline="\n", write_through=True)


def _text(stream: io.TextIOWrapper) -> str:
    return stream.buffer.getvalue().decode("utf-8", errors="replace")


def run_entry(entry, argv: list[str]) -> tuple[object, str, str]:
    """(exit code or 'accepted', stdout, stderr). Any other exception escapes: hypothesis reports the argv."""
    out, err = _stream("strict"), _stream("backslashreplace")  # what Python gives a UTF-8 terminal
    try:
        with redirect_stdout(out), redirect_stderr(err):
            rc = entry(list(argv))
    except SystemExit as exit_:  # argparse exits from inside parse_args (errors: 2, --help: 0)
        rc = 0 if exit_.code is None else exit_.code
    except WouldCompute:
        rc = "accepted"
    return rc, _text(out), _text(err)


def check_outcome(test: str, entry, argv: list[str]) -> None:
    rc, out, err = run_entry(entry, argv)
    if os.environ.get("ISD_FUZZ_LOG"):  # triage: one line per case, e.g. ISD_FUZZ_LOG=/tmp/fuzz.log
        with open(os.environ["ISD_FUZZ_LOG"], "a", encoding="utf-8", errors="backslashreplace") as log:
            log.write(f"{test}\t{rc}\t{argv!r}\t{err.strip()[:300]!r}\n")
    COUNTS[test] += 1
    COUNTS["total"] += 1
    command = test.removesuffix(" --set")
    DISTINCT.add((test, tuple(argv)))
    shown = f"argv={argv!r}\nrc={rc!r}\nstderr={err!r}\nstdout tail={out[-500:]!r}"
    assert "Traceback" not in out and "Traceback" not in err, shown
    if rc in (0, "accepted"):
        COUNTS["accepted"] += 1
        OUTCOMES[command].add("accepted")
        return
    assert rc == 2, shown
    lines = err.splitlines()  # str.splitlines: \n, \r, \x0b, \x0c, \x1c-\x1e, \x85, \u2028, \u2029 all break
    assert len(lines) == 1 and lines[0].strip(), shown
    assert ": error: " in lines[0], shown
    COUNTS["rejected"] += 1
    OUTCOMES[command].add("rejected")


def train_stand_in(cfg, *args, **kwargs):
    """In place of `isd.train.loop.train`: hands the validated config to what the run hands it first (the seeded
    generators, the optimizer, the schedule, the queue's shape), which raise or go non-finite on values the
    config check should have refused (a traceback in a real run); then stops."""
    import math

    import numpy as np
    import torch

    from isd.train.schedule import learning_rate

    torch.Generator().manual_seed(cfg.seed)
    np.random.SeedSequence([cfg.seed, cfg.epochs, 2**31])  # the data order's mix_seed(seed, epoch, index)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr, momentum=cfg.sgd_momentum,
                    weight_decay=cfg.weight_decay)
    for epoch in sorted({1, *[e + 1 for e in cfg.lr_decay_epochs if e < cfg.epochs], cfg.epochs}):
        lr = learning_rate(epoch, cfg.lr, cfg.epochs, cfg.schedule, cfg.lr_decay_epochs, cfg.lr_decay_rate)
        assert math.isfinite(lr) and lr >= 0, f"accepted a config whose epoch-{epoch} learning rate is {lr}"
    assert all(math.isfinite(v) for v in (cfg.temp_student, cfg.temp_infonce, cfg.ema, *cfg.crop_scale)), cfg
    torch.empty(0).new_empty((cfg.queue_size, 0))  # the queue's length as a tensor dimension, no memory
    raise WouldCompute("train")


def features_stand_in(ctx, source, split, ev):
    """In place of feature extraction (`isd knn|linear`): the values the probe and the loader get, then stop."""
    import math

    import torch

    assert 8 <= ctx.size <= 4096, f"accepted image size {ctx.size}"
    torch.Generator().manual_seed(ev.seed)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=ev.lr, momentum=0.9)
    assert math.isfinite(ev.lr), f"accepted --lr {ev.lr}"
    raise WouldCompute("extract features")


# ------------------------------------------------------------------------------------------------- sandbox


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A tiny image folder (train/ and val/), a tiny backbone checkpoint, a plain file, and every compute entry
    replaced by the sentinel; the working directory is a scratch folder, so relative paths land there."""
    import torch

    import isd.cli.demo
    import isd.cli.legacy_train
    import isd.cli.train
    import isd.data.splits
    import isd.eval.protocols
    from isd.data import sources
    from isd.nets.backbones import build_backbone

    root = tmp_path_factory.mktemp("fuzz")
    for split in ("train", "val"):
        write_image_folder(root / "data" / split, classes=2, per_class=2, size=16)
    torch.save(build_backbone("resnet18", "small", 8, 3).state_dict(), root / "backbone.pth")
    (root / "afile").write_text("a plain file")
    (root / "subset.txt").write_text("class0\nclass1\n")
    (root / "work").mkdir()

    def would_compute(what: str):
        def stop(*args, **kwargs):
            raise WouldCompute(what)
        return stop

    real_load_source = sources.load_source

    def load_source(dataset, data, *args, **kwargs):
        if dataset not in ("folder", "imagenet", "imagenet100"):  # a built-in set: a large read or a download
            raise WouldCompute(f"load {dataset}")
        return real_load_source(dataset, data, *args, **kwargs)

    real_load_backbone, loaded = isd.eval.protocols.load_backbone, {}

    def load_backbone(path, encoder="student", arch=None, trust=False):  # the sandbox checkpoint: once per encoder/arch
        if Path(path) != root / "backbone.pth":
            return real_load_backbone(path, encoder, arch, trust)
        if (encoder, arch) not in loaded:
            try:
                loaded[encoder, arch] = real_load_backbone(path, encoder, arch)
            except Exception as err:  # noqa: BLE001 - replayed below, as raised
                loaded[encoder, arch] = err
        if isinstance(loaded[encoder, arch], Exception):
            raise loaded[encoder, arch]
        return loaded[encoder, arch]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(isd.eval.protocols, "load_backbone", load_backbone)
        mp.chdir(root / "work")
        for command in (isd.cli.train, isd.cli.legacy_train, isd.cli.demo):  # every caller of the training loop
            mp.setattr(command, "train", train_stand_in)
        mp.setattr(isd.cli.legacy_train, "maybe_self_launch", lambda *a, **k: None)
        mp.setattr(isd.eval.protocols, "cached_features", features_stand_in)
        mp.setattr(isd.eval.protocols, "load_source", load_source)
        mp.setattr(isd.data.splits, "load_source", load_source)  # --eval-every's held-out split
        mp.setattr(isd.cli.demo, "find_idx_files", would_compute("demo"))
        yield root


# ------------------------------------------------------------------------------------------------- values

SANDBOX_MARK = "@SANDBOX@"  # replaced by the sandbox folder when the argv is built

SPECIAL = [
    "", " ", "0", "-0", "1", "2", "-1", "-2", "3", "7", "8", "64", "256", "0.5", "-0.5", "1.0", "0.0", "1e-320",
    "1e-3", "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "0x10", "1_000", "١٢",
    "9" * 30, "-" + "9" * 30, str(2**63), str(2**64), str(2**31), "1e3", "10**9",
    "true", "false", "none", "None", "null", "auto", "cpu", "cuda", "step", "cos", "weak/strong", "weak",
    "=", "a=b", "k==v", "=5", ",", "1,2", "1,,2", "1,2,3", ",1", "0.1,0.1", "1,0.2", "nan,1", "0.2,inf",
    "-", "--", "--epochs", "-k", "--help",
    "é", "名前", "🙂", "\t", "\n", "a\nb", "\r", "x\r\ny", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029",
    "\udcff", "caf\udce9", "\x1b[31mred",
]
PATHS = [
    "nowhere/data", "/proc/isd-fuzz/run", "/proc/isd-fuzz/x.pth", f"{SANDBOX_MARK}/afile/sub", f"{SANDBOX_MARK}/afile",
    f"{SANDBOX_MARK}/data", f"{SANDBOX_MARK}/backbone.pth", SANDBOX_MARK, "x" * 300, "a/" * 2100, ".", "..", "/",
    "~", "runs/fuzz", "out.json", "new/folder/", "auto", "caf\udce9.pth", "\udcff/x",
]

_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")  # argv never holds NUL
junk_text = st.text(_chars, max_size=12)
numbers = st.one_of(st.integers().map(str), st.integers(-3, 300).map(str), st.floats().map(repr),
                    st.floats(allow_nan=False, allow_infinity=False).map(lambda v: f"{v:g}"))
LINE_BREAKS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
with_break = st.tuples(junk_text, st.sampled_from(LINE_BREAKS), junk_text).map("".join)
hostile = st.one_of(st.sampled_from(SPECIAL), st.sampled_from(PATHS), numbers, junk_text, with_break,
                    st.tuples(numbers, numbers).map(",".join), st.tuples(junk_text, numbers).map("=".join))


def mostly(valid: st.SearchStrategy[str], bad: st.SearchStrategy[str] = hostile) -> st.SearchStrategy[str]:
    """Valid three times in five, so the checks behind the first bad value are reached too."""
    return st.sampled_from([valid, valid, valid, bad, bad]).flatmap(lambda strategy: strategy)


# plausible values for the string flags, by argparse dest (the train, eval and original scripts' flags)
PLAUSIBLE = {
    "recipe": st.sampled_from(["isd-fmnist-demo", "isd-r18-imagenet", "byol-r18-imagenet", "moco-r18-imagenet"]),
    "augmentation": st.sampled_from(["weak/strong", "strong/strong", "weak/weak", "strong/weak"]),
    "run_dir": st.sampled_from(["runs/fuzz", f"{SANDBOX_MARK}/work/run"]),
    "checkpoint_path": st.sampled_from(["runs/fuzz", f"{SANDBOX_MARK}/work/run"]),
    "out": st.sampled_from(["out", f"{SANDBOX_MARK}/work/out"]),
    "save": st.sampled_from(["out", f"{SANDBOX_MARK}/work/out"]),
    "output": st.sampled_from(["exported.pth", f"{SANDBOX_MARK}/work/out/b.pth"]),
    "resume": st.sampled_from(["auto", f"{SANDBOX_MARK}/backbone.pth"]),
    "subset_file": st.just(f"{SANDBOX_MARK}/subset.txt"),
    "lr_schedule": st.sampled_from(["15,30,40", "5", "", "1,2"]),
    "lr_decay_epochs": st.sampled_from(["140,180", "5", "", "1,2"]),
    "arch": st.sampled_from(["resnet18", "resnet34", "resnet50"]),
}


PATH_DESTS = {"run_dir", "checkpoint_path", "out", "save", "output", "resume", "subset_file"}
bad_path = st.one_of(st.sampled_from(PATHS), hostile)


def value_for(action: argparse.Action) -> st.SearchStrategy[str]:
    """Values for one flag: mostly well-typed and in range, else hostile."""
    if action.dest in PLAUSIBLE:
        return mostly(PLAUSIBLE[action.dest], bad_path if action.dest in PATH_DESTS else hostile)
    if action.choices:
        return mostly(st.sampled_from([str(c) for c in action.choices]))
    if action.type is int:
        return mostly(st.integers(0, 64).map(str), st.one_of(hostile, st.integers().map(str)))
    if action.type is float:
        return mostly(st.floats(1e-3, 1).map(repr), st.one_of(hostile, st.floats().map(repr)))
    return hostile


# ------------------------------------------------------------------------------------------------- parsers


def option_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def all_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command line the project accepts, by the name its errors start with."""
    from isd.cli.legacy_eval import SCRIPTS as EVAL_SCRIPTS
    from isd.cli.legacy_eval import legacy_parser as eval_parser
    from isd.cli.legacy_train import SCRIPTS as TRAIN_SCRIPTS
    from isd.cli.legacy_train import legacy_parser
    from isd.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parsers = {f"isd {name}": sub.choices[name] for name in ("train", "knn", "linear", "export", "demo")}
    parsers |= {script: legacy_parser(script) for script in TRAIN_SCRIPTS}
    parsers |= {script: eval_parser(script) for script in EVAL_SCRIPTS}
    return parsers


PARSERS = all_parsers()
OWN_STRATEGY = ("--set", "--weights")  # drawn by set_pairs() / every original eval command line
FLAG_CASES = [(name, action.option_strings[0]) for name, parser in PARSERS.items()
              for action in option_actions(parser) if action.option_strings[0] not in OWN_STRATEGY]


@st.composite
def flag_args(draw, parser: argparse.ArgumentParser, focus: str) -> list[str]:
    """`focus` and 0-3 other flags of `parser`, each with a drawn value, as `--flag value` or `--flag=value`."""
    actions = [a for a in option_actions(parser) if a.option_strings[0] not in OWN_STRATEGY]
    first = next(a for a in actions if a.option_strings[0] == focus)
    argv: list[str] = []
    for action in [first, *draw(st.lists(st.sampled_from(actions), max_size=3))]:
        flag = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:
            argv.append(flag)
            continue
        values = draw(st.lists(value_for(action), min_size=1, max_size=3 if action.nargs == "+" else 1))
        if len(values) == 1 and flag.startswith("--") and draw(st.booleans()):
            argv.append(f"{flag}={values[0]}")
        else:
            argv += [flag, *values]
    return argv


def _set_value(key: str) -> st.SearchStrategy[str]:
    """A value for `--set KEY=`: mostly of the key's type and in range, else wrong-typed or out of range."""
    from isd.config import AUGMENTATIONS, COMPILE_MODES, FIELDS, METHODS, ARCHS, DATASETS

    default = FIELDS[key].default
    choices = {"method": METHODS, "arch": ARCHS, "dataset": DATASETS, "stem": ("auto", "imagenet", "small"),
               "augmentation": [f"{a}/{b}" for a in AUGMENTATIONS for b in AUGMENTATIONS],
               "schedule": ("step", "cos"), "device": ("auto", "cpu"), "amp": ("auto", "bf16", "off"),
               "channels_last": ("auto", "on", "off"), "on_nonfinite": ("stop", "skip"),
               "data_pipeline": ("auto", "workers", "device"), "compile": COMPILE_MODES,
               "data": (f"{SANDBOX_MARK}/data",), "run_dir": ("runs/fuzz",), "resume": ("auto", "none"),
               "subset_file": (f"{SANDBOX_MARK}/subset.txt", ""), "recipe": ("isd-fmnist-demo",)}
    if key in choices:
        valid = st.sampled_from(list(choices[key]))
    elif isinstance(default, bool):
        valid = st.sampled_from(["true", "false", "on", "off", "1", "0", "yes", "no"])
    elif key == "crop_scale":
        valid = st.tuples(st.floats(0.01, 0.5), st.floats(0.5, 1)).map(lambda t: f"{t[0]},{t[1]}")
    elif isinstance(default, tuple):
        valid = st.lists(st.integers(1, 300).map(str), max_size=3).map(",".join)
    elif isinstance(default, float) or key == "temp_teacher":
        valid = st.floats(1e-3, 0.99).map(repr)
    else:
        valid = st.integers(0, 64).map(str)
    bad = st.one_of(numbers, hostile, st.sampled_from(["", "none", "true", "yes", "0", "-1", "1e999", "nan", "inf",
                                                        "-inf", str(2**63), "1,2,3", "0.5", "9" * 25]),
                    st.lists(numbers, max_size=4).map(",".join))
    return mostly(valid, bad)


@st.composite
def set_pairs(draw, focus: str | None = None) -> list[str]:
    """1-3 `--set KEY=VALUE` (the first for `focus`), keys sometimes misspelt, pairs sometimes malformed."""
    from isd.config import FIELDS

    keys = [focus] if focus else []
    keys += draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=0 if focus else 1, max_size=2))
    argv: list[str] = []
    for key in keys:
        shown = draw(st.sampled_from([key] * 6 + [key.replace("_", "-"), f" {key} ", key.upper(), key + "x", ""]))
        value = draw(_set_value(key))
        pair = draw(st.sampled_from([f"{shown}={value}"] * 5 + [f"{shown} = {value}", shown, f"{shown}=={value}"]))
        argv += draw(st.sampled_from([["--set", pair], [f"--set={pair}"]]))
    return argv


def positional(valid: str) -> st.SearchStrategy[list[str]]:
    """[valid] usually, else [] (left out) or [a hostile value or path]."""
    return st.sampled_from([st.just([valid])] * 3 + [st.just([]), bad_path.map(lambda v: [v])]).flatmap(lambda x: x)


def command_line(draw, name: str) -> tuple[object, list[str]]:
    """(entry function, the words before the flags) for one of PARSERS."""
    from isd.cli.legacy_eval import main as eval_main
    from isd.cli.legacy_train import main as train_main
    from isd.cli.main import main

    data, ckpt = f"{SANDBOX_MARK}/data", f"{SANDBOX_MARK}/backbone.pth"
    if name == "isd train":
        return main, ["train", *draw(positional(data))]
    if name in ("isd knn", "isd linear"):
        return main, [name[4:], *draw(positional(ckpt)), *draw(positional(data))]
    if name == "isd export":
        return main, ["export", *draw(positional(ckpt))]
    if name == "isd demo":
        return main, ["demo", *draw(st.sampled_from([st.just([]), bad_path.map(lambda v: [v])]).flatmap(lambda x: x))]
    if name.startswith("train_"):
        return (lambda argv: train_main(name, argv)), draw(positional(data))
    weights = ["--weights", draw(mostly(st.just(ckpt)))] if draw(st.integers(0, 4)) else []  # required: usually given
    return (lambda argv: eval_main(name, argv)), [*draw(positional(data)), *weights]


def resolve(argv: list[str], root: Path) -> list[str]:
    return [a.replace(SANDBOX_MARK, str(root)) for a in argv]


# ------------------------------------------------------------------------------------------------- the properties


@pytest.mark.parametrize("command, flag", FLAG_CASES, ids=[f"{c}:{f}" for c, f in FLAG_CASES])
@settings(max_examples=20, **SETTINGS)
@given(data=st.data())
def test_every_flag(sandbox, command, flag, data):
    """`command` with `flag` (and up to three other flags) given drawn values: accepted or one error line."""
    entry, argv = command_line(data.draw, command)
    argv += data.draw(flag_args(PARSERS[command], flag))
    if "--set" in {a.option_strings[0] for a in option_actions(PARSERS[command])} and data.draw(st.integers(0, 3)) == 0:
        argv += data.draw(set_pairs())
    check_outcome(command, entry, resolve(argv, sandbox))


def _config_keys() -> list[str]:
    from isd.config import FIELDS
    return sorted(FIELDS)


@pytest.mark.parametrize("key", _config_keys())
@settings(max_examples=25, **SETTINGS)
@given(data=st.data())
def test_set_every_config_key(sandbox, key, data):
    """`isd train DATA --set KEY=VALUE` (and `isd demo --set`, and a few other flags) for every config key."""
    command = data.draw(st.sampled_from(["isd train"] * 4 + ["isd demo"]))
    entry, argv = command_line(data.draw, command)
    argv += data.draw(set_pairs(focus=key))
    if data.draw(st.booleans()):
        focus = data.draw(st.sampled_from([f for c, f in FLAG_CASES if c == command]))
        argv += data.draw(flag_args(PARSERS[command], focus))
    check_outcome(f"{command} --set", entry, resolve(argv, sandbox))


@settings(max_examples=150, **SETTINGS)
@given(data=st.data())
def test_other_words(sandbox, data):
    """`isd recipes [NAME]`, and any words in place of a subcommand."""
    from isd.cli.main import main

    if data.draw(st.booleans()):
        argv = ["recipes", *data.draw(st.lists(st.one_of(hostile, st.just("isd-fmnist-demo")), max_size=2))]
    else:
        argv = data.draw(st.lists(st.one_of(hostile, st.sampled_from(["train", "knn", "-h", "--version"])),
                                  max_size=3))
    check_outcome("isd (other)", main, resolve(argv, sandbox))


# ------------------------------------------------------------------------------------------------- the count


def test_every_command_line_reached_both_outcomes(capsys):
    """Runs last. A fuzz whose values are all refused never reaches the checks behind the first value, and one
    whose values are all accepted tests no check: every command line it ran must have had examples accepted and
    examples refused with one line. Then it prints how many command lines were tried (docs/reliability.md)."""
    if COUNTS["total"] == 0:
        pytest.skip("run with the property tests above to count their cases")
    one_sided = {command: sorted(seen) for command, seen in OUTCOMES.items() if seen != {"accepted", "rejected"}}
    assert not one_sided, one_sided
    if COUNTS["isd train"] and COUNTS["isd (other)"]:  # the whole file ran: every command line was fuzzed
        assert set(OUTCOMES) == {*PARSERS, "isd (other)"}
    per_command = ", ".join(f"{k}: {v}" for k, v in COUNTS.items() if k not in ("total", "accepted", "rejected"))
    with capsys.disabled():
        print(f"\ncli fuzz: {COUNTS['total']} generated command lines ({len(DISTINCT)} distinct), {COUNTS['rejected']} "
              f"one-line errors with exit code 2 and {COUNTS['accepted']} accepted; no traceback "
              f"({len(FLAG_CASES)} flags, {len(_config_keys())} config keys; {per_command})")
