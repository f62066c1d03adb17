"""Markdown tables of committed speed measurements: `isd bench --out FILE`, `benchmarks/vs_original.py --out FILE`,
`benchmarks/cpu_bf16.py --out FILE` and `benchmarks/step_ops.py --out FILE`.

`isd report FILE.json` renders them, and a README block `<!-- begin: isd report FILE.json -->` is regenerated
and checked like the experiment tables, so every speed figure in the docs has its file behind it.
"""

from __future__ import annotations

import json
from pathlib import Path

from isd.errors import UsageError
from isd.nets.backbones import auto_stem


def is_speed_file(path: str) -> bool:
    return path.endswith(".json") and Path(path).is_file()


def speed_markdown(path: str) -> str:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{path} is not a readable JSON file ({err})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: not a result of `isd bench --out`, vs_original.py or cpu_bf16.py")
    if "runs" in data:
        return _versus_original(data)
    if "native_bf16" in data:
        return _cpu_bf16(data)
    rows = data.get("results")
    if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
        if all("total_ops" in r for r in rows):
            return _step_ops(data)
        if all("max_relative_difference" in r for r in rows):
            return _fidelity(data)
        if all("arch" in r and "precision" in r for r in rows):
            return _bench(data)
    raise UsageError(f"{path}: not a result of `isd bench --out`, vs_original.py, compress_fidelity.py or "
                     f"cpu_bf16.py")


def _fidelity(data: dict) -> str:
    """A side-by-side run of the original code and isd in float64 (compress_fidelity.py): the largest relative
    difference of each tensor over the steps."""
    names = list(dict.fromkeys(key for r in data["results"] for key in r["max_relative_difference"]))
    lines = [f"| variant | steps | {' | '.join(names)} | equal to float64 rounding |",
             "| --- | --- | " + "--- | " * len(names) + "--- |"]
    for r in data["results"]:
        diffs = " | ".join(f"{r['max_relative_difference'][n]:.1e}" if n in r["max_relative_difference"] else "–"
                           for n in names)
        lines.append(f"| {r.get('variant', '–')} | {r.get('steps', '–')} | {diffs} | "
                     f"{'yes' if r.get('equal_to_float64_rounding') else 'NO'} |")
    about = f"{data.get('what', 'original against isd')}: the largest relative difference over the steps."
    return f"{about} {_machine(data)}\n\n" + "\n".join(lines) + "\n"


def _machine(data: dict) -> str:
    commit = (data.get("commit") or "unknown")[:10] + ("+dirty" if data.get("dirty") else "")
    machine = data.get("device") or data.get("machine", "unknown")  # benchmarks without a torch device say "machine"
    return f"Machine: {machine}; torch {data['torch']}; commit {commit}; `{data['command']}`."


def _net_details(cfg: dict) -> str:
    """What sets this net apart from the ResNet its name and image size imply: a narrower width, an unusual stem
    (recorded since the CPU demo's net moved to the 7x7 stem on 28 px)."""
    usual_stem = auto_stem(cfg["image_size"])
    details = [f"width {cfg['width']}"] if cfg.get("width", 64) != 64 else []
    if cfg.get("stem", usual_stem) != usual_stem:
        details.append(f"{cfg['stem']} stem")
    return f" ({', '.join(details)})" if details else ""


def _bench(data: dict) -> str:
    lines = ["| method | arch | size | batch | precision | views made by | compile | mode | images/s | TFLOP/s | MFU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for cfg in data["results"]:
        arch = cfg["arch"] + _net_details(cfg)
        precision = cfg["precision"] + (" + channels_last" if cfg.get("channels_last") else "")
        compiled = cfg.get("compile", "off")
        if compiled != "off":
            compiled += f" (first step {cfg['first_step_seconds']:.0f} s)"
        for row in cfg["rows"]:
            tflops = f"{row['tflops']:.2f}" if row.get("tflops") is not None else "–"
            mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else "–"
            lines.append(f"| {cfg['method']} | {arch} | {cfg['image_size']} | {cfg['batch']} | {precision} | "
                         f"{cfg.get('pipeline', '–')} | {compiled} | {row['mode']} | {row['images_per_s']:,.1f} | "
                         f"{tflops} | {mfu} |")
    about = ("`isd bench`: compute = the training step on one fixed batch; data = decoding and augmentation only; "
             "e2e = both, as training runs. Views made by: the DataLoader workers (PIL per image), the device "
             "(image files decoded and augmented there in batches) or memory (an in-memory set, augmented on the "
             "device). MFU against the chip's dense peak (GPU only).")
    return f"{about} {_machine(data)}\n\n" + "\n".join(lines) + "\n"


def _versus_original(data: dict) -> str:
    setup = data["setup"]
    lines = ["| script | original images/s | isd images/s | isd / original | each run (original; isd) "
             "| isd's extra flags |",
             "| --- | --- | --- | --- | --- | --- |"]
    for run in data["runs"]:
        flags = " ".join(run["isd"].get("extra_flags") or []) or "–"
        each = "; ".join(", ".join(f"{r['images_per_s']:.2f}" for r in run[side].get("runs", []))
                         for side in ("original", "isd"))
        lines.append(f"| {run['script']} | {run['original']['images_per_s']:,.2f} | {run['isd']['images_per_s']:,.2f} "
                     f"| {run['ratio']:.2f}× | {each if each.strip('; ') else '–'} | `{flags}` |")
    size = "×".join(str(s) for s in setup["image_size"])
    about = (f"The original code and isd side by side: {setup['arch']}, {setup['images']} JPEGs of {size} px, "
             f"batch {setup['batch']}, {setup['workers']} workers; {setup['measured']}.")
    return f"{about} {_machine(data)}\n\n" + "\n".join(lines) + "\n"


def _cpu_bf16(data: dict) -> str:
    setup = data["setup"]
    lines = ["| layout | precision | images/s |", "| --- | --- | --- |"]
    lines += [f"| {r['layout']} | {r['precision']} | {r['images_per_s']:,.2f} |" for r in data["rows"]]
    about = (f"{setup['arch']} {setup['measured']}, batch {setup['batch']} at {setup['size']} px; native bf16 "
             f"(AVX512-BF16 or AMX): {'yes' if data['native_bf16'] else 'no'}, torch's CPU capability "
             f"{data['cpu_capability']}.")
    return f"{about} {_machine(data)}\n\n" + "\n".join(lines) + "\n"


def _step_ops(data: dict) -> str:
    names = ("views", "forward+loss+backward", "optimizer", "teacher+queue")
    lines = ["| step | size | views made by | views | forwards, loss, backward | optimizer | teacher + queue | total |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in data["results"]:
        cells = []
        for phase in (row["phases"].get(name, {"ops": 0}) for name in names):
            trips = phase.get("host_round_trips")
            cells.append(f"{phase['ops']:,}" + (f" ({trips})" if trips is not None else ""))
        name = row.get("recipe") or f"{row['method']} {row['arch']}"
        lines.append(f"| {name}, batch {row['batch']} | {row['image_size']} px × {row['channels']} | {row['pipeline']} "
                     f"| {' | '.join(cells)} | {row['total_ops']:,} |")
    about = ("`benchmarks/step_ops.py`: operations one training step dispatches to a kernel (tensor views, which "
             "launch nothing, left out), by phase; on a GPU each is at least one kernel launch. In brackets, where "
             "the file counts them: host round trips (a tensor made from Python data or a value read back: a "
             "blocking copy on a GPU).")
    return f"{about} {_machine(data)}\n\n" + "\n".join(lines) + "\n"
