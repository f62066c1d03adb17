"""Six training steps of every method, and what is compared of them across machines (`test_golden_steps.py`).

Two recordings live in `tests/golden/steps.json`:

- `bits`: float32, as training runs. A sha256 of every tensor of the state and every logged float, to the bit.
  Float summation order depends on the kernels torch picks for this CPU (ATen's vector width, oneDNN's and
  MKL's code paths and blocking, which follow the vendor, the model and its ISA extensions) and on the torch
  build, so each recording is keyed by a fingerprint of all of these and compared only where it matches.
- `float64`: the same steps with the model, the views and the losses in float64. Rounding differences between
  kernels then stay below 1e-8 of a tensor's size after six steps (measured across ATen's default/AVX2 kernels
  and MKL's SSE4.2/AVX2 paths), while a real change of the step moves losses or state by 1e-4 or more. It is
  compared on every machine, with `FLOAT64_RTOL`.

`python tests/golden_record.py` adds this machine's float32 recording (from the code as it is);
`--float64` rewrites the float64 one, which only a deliberate change of the step's maths should need.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden" / "steps.json"

CASES = {
    "isd": {"method": "isd"},
    "isd-plus": {"method": "isd-plus", "temp": 0.1, "temp_t": 0.05, "augmentation": "weak/strong"},
    "byol": {"method": "byol"},
    "moco": {"method": "moco", "temp": 0.2},
    "supervised": {"method": "supervised"},
    "isd-bf16": {"method": "isd", "amp": "bf16"},
}
FLOAT64_CASES = [name for name in CASES if CASES[name].get("amp") != "bf16"]  # autocast leaves float64 alone
COMMON = {"width": 8, "stem": "small", "batch_size": 4, "queue_size": 8, "num_workers": 0, "device": "cpu",
          "amp": "off", "channels_last": "off", "print_freq": 1, "epochs": 2, "ema": 0.9, "lr": 0.05, "seed": 7,
          "data": "unused"}  # amp and layout as the recording's "auto" meant on a CPU then

# A loss, a logged stat or a state tensor in float64 may differ from the recording by this much, relative to its
# size. Measured between ATen's default and AVX2 kernels with MKL's SSE4.2 and AVX2 paths on one machine: losses
# within 4e-15, state within 2.5e-13 (ISD, MoCo), SGD momentum within 4.7e-9 (BYOL's, where gradients of
# successive steps nearly cancel). A step changed on purpose (loss × 1.0001, one enqueue skipped, the teacher moved
# before the optimizer step) moves some value by 1e-3 or more; tests/test_golden_steps.py checks each is caught.
FLOAT64_RTOL = 1e-7

# what makes torch pick other kernels for the same code: the CPU's ISA extensions that ATen, oneDNN and MKL
# dispatch on, and the environment variables that override their choice
KERNEL_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd",
                "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
DISPATCH_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE", "MKL_ENABLE_INSTRUCTIONS",
                "MKL_CBWR", "MKL_DEBUG_CPU_TYPE", "TORCH_MKLDNN_MATMUL_MIN_DIM")


def cpu_description() -> dict[str, str]:
    """Vendor, family, model and kernel-relevant ISA flags of this CPU (Linux's /proc/cpuinfo; elsewhere what
    `platform` knows)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                if fields:
                    break  # the first processor is enough
                continue
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {"vendor": fields.get("vendor_id", platform.processor() or "unknown"),
            "family": fields.get("cpu family", "?"), "model": fields.get("model", "?"),
            "isa": " ".join(f for f in KERNEL_FLAGS if f in flags)}


def fingerprint() -> dict[str, str]:
    """Everything that decides which float32 kernels this machine runs the golden steps with."""
    env = " ".join(f"{k}={os.environ[k]}" for k in DISPATCH_ENV if k in os.environ)
    return {"torch": torch.__version__, "torch_git": torch.version.git_version[:12], "machine": platform.machine(),
            **cpu_description(), "aten": torch.backends.cpu.get_cpu_capability(), "env": env or "-"}


def fingerprint_key(fp: dict[str, str]) -> str:
    return (f"torch {fp['torch']} ({fp['torch_git']}), {fp['machine']} {fp['vendor']} family {fp['family']} "
            f"model {fp['model']}, ATen {fp['aten']}, isa [{fp['isa']}], env {fp['env']}")


def memory_source(*_args, **_kwargs):
    from isd.data.sources import IMAGENET_MEAN, IMAGENET_STD, Source

    g = torch.Generator().manual_seed(11)
    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8, generator=g)
    return Source("golden", ["a", "b", "c"], torch.tensor([0, 1, 2] * 4), IMAGENET_MEAN, IMAGENET_STD,
                  native_size=16, images=images)


@contextlib.contextmanager
def precision(dtype: torch.dtype) -> Iterator[None]:
    """One thread, and `dtype` as the default: the networks, the queue and the views are made in it."""
    threads, default = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(default)
        torch.set_num_threads(threads)


def run_steps(name: str, run_dir: Path, patch, dtype: torch.dtype = torch.float32):
    """Six steps of the real loop on fixed in-memory images: (logged rows, the state, SGD's momentum buffers)."""
    import isd.train.loop as loop
    from isd.config import build_config

    patch(loop, "load_source", memory_source)
    with precision(dtype):
        setup = loop.train(build_config(None, {**COMMON, **CASES[name], "run_dir": str(run_dir)}), log=lambda _: None)
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    steps = [{k: v for k, v in r.items() if k not in ("time", "images_per_s", "data_wait", "epoch", "lr", "kind")}
             for r in rows if r["kind"] == "train"]
    state = dict(setup.model.state_dict())  # the teacher as the next step uses it
    momentum = [s["momentum_buffer"] for s in setup.optimizer.state_dict()["state"].values()]
    return steps, state, momentum


def digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
    return hashlib.sha256(f"{t.dtype} {tuple(t.shape)}".encode() + raw.numpy().tobytes()).hexdigest()[:24]


def float32_case(name: str, run_dir: Path, patch) -> dict:
    steps, state, momentum = run_steps(name, run_dir, patch)
    return {"steps": steps, "state": {k: digest(v) for k, v in state.items()},
            "sgd_momentum": [digest(m) for m in momentum]}


def _probes(n: int) -> torch.Tensor:
    """[3, n] fixed pseudo-random weights in [-0.5, 0.5), made by integer arithmetic: the same on every machine."""
    i = torch.arange(n, dtype=torch.int64)
    rows = [((i * a + b) % 2**31).double() / 2**31 - 0.5 for a, b in ((1103515245, 12345), (22695477, 1),
                                                                       (134775813, 7))]
    return torch.stack(rows) * (12.0**0.5)  # unit variance


def summary(t: torch.Tensor) -> list:
    """A float tensor as its L2 norm and three fixed random projections (each of the norm's size for a random
    tensor); an integer tensor as its values' digest. Cheap to store, and a change of any element shows."""
    t = t.detach().cpu()
    if not t.is_floating_point():
        return [digest(t)]
    flat = t.double().flatten()
    return [float(flat.norm()), *(float(v) for v in _probes(flat.numel()) @ flat)]


def float64_case(name: str, run_dir: Path, patch) -> dict:
    steps, state, momentum = run_steps(name, run_dir, patch, torch.float64)
    return {"steps": steps, "state": {k: summary(v) for k, v in state.items()},
            "sgd_momentum": [summary(m) for m in momentum]}


def float64_differences(got: dict, want: dict, rtol: float = FLOAT64_RTOL) -> dict[str, float]:
    """Every compared value that is off by more than `rtol` of its size: {where: relative difference}."""
    out: dict[str, float] = {}

    def compare(where: str, a, b, scale: float) -> None:
        if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
            if a != b:
                out[where] = float("inf")
            return
        rel = abs(a - b) / max(scale, 1e-12)
        if not rel <= rtol:  # also NaN
            out[where] = rel

    if len(got["steps"]) != len(want["steps"]):
        return {"steps": float("inf")}
    for i, (g, w) in enumerate(zip(got["steps"], want["steps"])):
        for key in sorted(set(g) | set(w)):
            a, b = g.get(key), w.get(key)
            compare(f"step {i + 1} {key}", a, b, abs(b) if isinstance(b, float) else 1.0)
    pairs = [*((f"state {k}", got["state"].get(k), v) for k, v in want["state"].items()),
             *((f"sgd momentum {i}", g, w) for i, (g, w) in enumerate(zip(got["sgd_momentum"], want["sgd_momentum"])))]
    if got["state"].keys() != want["state"].keys() or len(got["sgd_momentum"]) != len(want["sgd_momentum"]):
        out["state keys"] = float("inf")
    for where, g, w in pairs:
        if g is None or len(g) != len(w):
            out[where] = float("inf")
            continue
        for j, (a, b) in enumerate(zip(g, w)):
            compare(f"{where} [{j}]", a, b, w[0] if not isinstance(w[0], str) else 1.0)
    return out


def load() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {"bits": {}, "float64": {}}


def record(float64: bool = False) -> None:
    import tempfile

    golden = load()
    with tempfile.TemporaryDirectory() as tmp:
        if float64:
            golden["float64"] = {name: float64_case(name, Path(tmp) / f"{name}-f64", setattr)
                                 for name in FLOAT64_CASES}
        fp = fingerprint()
        cases = {name: float32_case(name, Path(tmp) / name, setattr) for name in CASES}
        golden["bits"][fingerprint_key(fp)] = {"fingerprint": fp, "cases": cases}
        for name, case in cases.items():
            print(name, [round(s["loss"], 5) for s in case["steps"]])
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"recorded under {fingerprint_key(fp)!r}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent / "src"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float64", action="store_true", help="also rewrite the float64 recording")
    record(parser.parse_args().float64)
