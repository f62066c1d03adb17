"""Training speed, measured on the real training step: compute only, data only, and end to end.

- compute: one batch of the run's own views, made once, then only the step (forwards, loss, backward, SGD, EMA,
  enqueue, the non-finite guard), as `isd train` runs it;
- data: only the batches (decoding and augmentation, on the device for in-memory sets), no step;
- e2e: both, as a training epoch runs.
Each mode times `steps` steps after `warmup` untimed ones (data and e2e from image files also first take the
batches the workers made ahead, `loader.ahead`); the very first batch and step (where `compile` compiles the
views' pixel work and the networks) are timed on their own, as `first_step_seconds`. FLOPs per image are
counted once on the real step (torch's FlopCounterMode: matrix products and convolutions of the forwards and
the backward); beside a GPU figure, MFU is the achieved FLOP/s over the chip's dense bf16 (or fp32) peak from
its data sheet.
"""

from __future__ import annotations

import collections
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from isd.config import Config
from isd.data.batches import Batch
from isd.train.loop import EpochRunner, build, image_size_and_stem, training_loader, use_bf16
from isd.train.runlog import RunLog

MODES = ("compute", "data", "e2e")
PROFILED_STEPS = 10  # enough to see a step's pattern; a trace of every op and kernel grows with each step
# dense tensor-core peaks from the vendors' data sheets, FLOP/s (SXM parts)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}
PEAK_FP32 = {"H200": 67e12, "H100": 67e12, "A100": 19.5e12, "L40S": 91.6e12, "L4": 30.3e12, "A10": 31.2e12}


@dataclass
class Speed:
    mode: str
    images_per_s: float
    seconds: float
    steps: int
    batch: int


def peak_flops(device: torch.device, bf16: bool) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    table = PEAK_BF16 if bf16 else PEAK_FP32
    return next((peak for chip, peak in table.items() if chip in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, work, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        work()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        work()
    _sync(device)
    return time.perf_counter() - start


def _endless(loader) -> Iterator[Batch]:
    epoch = 1
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def bench(cfg: Config, modes: tuple[str, ...] = MODES, steps: int = 20, warmup: int = 5,
          profile_to: Path | None = None) -> dict:
    """Speed of `cfg`'s training on its data, one row per mode, plus FLOPs per image and MFU; with `profile_to`,
    also up to PROFILED_STEPS end-to-end steps under torch.profiler: its table to that file, its summary in the
    result."""
    with tempfile.TemporaryDirectory(prefix="isd_bench_") as tmp:
        cfg.run_dir, cfg.resume = tmp, None
        setup = build(cfg, log=lambda _: None)
        loader = training_loader(setup)
        runlog = RunLog(setup.run_dir, enabled=False)
        runner = EpochRunner(setup, setup.model, loader, loader.steps_per_epoch(), runlog)
        setup.model.train()
        batches = _endless(loader)
        counter = iter(range(10**12))
        start = time.perf_counter()
        fixed = next(batches)  # with the step below: where `compile` compiles the views and the networks
        first_step = time.perf_counter() - start + _timed(setup.device, lambda: runner.step(fixed, next(counter)),
                                                          1, 0)
        with FlopCounterMode(display=False) as flops:
            runner.step(fixed, next(counter))
        per_image = flops.get_total_flops() / cfg.batch_size
        work = {"compute": lambda: runner.step(fixed, next(counter)),
                "data": lambda: next(batches),
                "e2e": lambda: runner.step(next(batches), next(counter))}
        # the workers fill their queues while the compute mode runs: drain them first, or `data` would time
        # batches that were made before its clock started
        rows = []
        for mode in modes:
            seconds = _timed(setup.device, work[mode], steps, warmup + (loader.ahead if mode != "compute" else 0))
            rows.append(Speed(mode, round(steps * cfg.batch_size / seconds, 1), round(seconds, 3), steps,
                              cfg.batch_size))
        profiled = None
        if profile_to is not None:
            profiled = profile_steps(setup.device, work["e2e"], min(steps, PROFILED_STEPS), profile_to)
        bf16 = use_bf16(cfg, setup.device)
        peak = peak_flops(setup.device, bf16)
        out = []
        for row in rows:
            entry = asdict(row)
            if row.mode != "data":
                achieved = row.images_per_s * per_image
                entry["tflops"] = round(achieved / 1e12, 2)
                entry["mfu"] = round(achieved / peak, 4) if peak else None
            out.append(entry)
        return {"method": cfg.method, "arch": cfg.arch, "width": cfg.width,
                "stem": image_size_and_stem(cfg, setup.source)[1], "image_size": setup.size,
                "batch": cfg.batch_size, "data": setup.source.name, "precision": "bf16" if bf16 else "fp32",
                "channels_last": runner.memory_format == torch.channels_last, "compile": cfg.compile,
                "pipeline": loader.pipeline,
                "first_step_seconds": round(first_step, 2),
                "gflops_per_image": round(per_image / 1e9, 3), "peak_tflops": peak / 1e12 if peak else None,
                "rows": out, **({"profile": profiled} if profiled is not None else {})}


def profile_steps(device: torch.device, work, steps: int, table_path: Path) -> dict:
    """Run `work` `steps` times under torch.profiler; write its operator table (sorted by the device's time on a
    GPU, the host's on a CPU) to `table_path`; return the wall time per step and, on a GPU, the kernels per step
    and the kernels' time over the wall time (below 1: the GPU waits for the host)."""
    on_gpu = device.type == "cuda"
    if not on_gpu:
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # else the profiler logs its start, stop and the missing GPU
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    _sync(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            work()
        _sync(device)
        wall = time.perf_counter() - start
    averages = prof.key_averages()
    sort = "self_cpu_time_total"
    summary: dict = {"file": str(table_path), "steps": steps, "wall_ms_per_step": round(wall / steps * 1e3, 3)}
    if on_gpu:
        try:
            newer = hasattr(averages[0], "self_device_time_total")
            sort = "self_device_time_total" if newer else "self_cuda_time_total"
            kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
            kernel_us = sum(e.time_range.elapsed_us() for e in kernels)
            summary.update(kernels_per_step=round(len(kernels) / steps, 1),
                           kernel_time_over_wall=round(kernel_us / 1e6 / wall, 3))
        except Exception as err:  # a profiler of another torch version: keep the table, say what failed
            summary["summary_error"] = f"{type(err).__name__}: {err}"
    table_path.write_text(averages.table(sort_by=sort, row_limit=40))
    return summary


# a tensor made from Python data, or a value read back: on a GPU a blocking copy, which waits for the queued kernels
HOST_ROUND_TRIPS = {"lift_fresh", "lift_fresh_copy", "_local_scalar_dense", "nonzero", "item", "is_nonzero"}


class OpCounter(TorchDispatchMode):
    """Counts the operations that reach a backend kernel (views, which launch nothing, are left out), by phase."""

    def __init__(self, phase: str = "all") -> None:
        super().__init__()
        self.phase = phase
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.counts[self.phase][func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    def round_trips(self, phase: str = "all") -> int:
        return sum(n for name, n in self.counts[phase].items() if name in HOST_ROUND_TRIPS)
