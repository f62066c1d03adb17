"""Training-step throughput of each method on synthetic batches (no data loading), images/s.

    PYTHONPATH=src python benchmarks/throughput.py --arch resnet18 --size 224 --batch 256 --steps 20
Measures the full step: student forward/backward, EMA, teacher forward, loss, enqueue, SGD step.
`--guard stop skip` adds rows with the training loop's non-finite guard in that mode (`none` = no guard).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from isd.config import build_config
from isd.methods import build_method
from isd.train.nonfinite import NonFiniteGuard


def measure(method: str, arch: str, size: int, batch: int, steps: int, device: torch.device,
            bf16: bool, channels_last: bool, width: int = 64, stem: str = "imagenet", channels: int = 3,
            guard_mode: str = "none") -> float:
    queue = max(batch, 16384 // batch * batch)
    cfg = build_config(None, {"method": method, "arch": arch, "batch_size": batch, "queue_size": queue,
                              "width": width, "data": "x"})
    torch.manual_seed(0)
    model = build_method(cfg, in_channels=channels, stem=stem).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    x = torch.randn(batch, channels, size, size, device=device).contiguous(memory_format=fmt)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    guard = NonFiniteGuard(model, guard_mode) if guard_mode != "none" else None
    counter = iter(range(10**9))

    def step() -> None:  # what EpochRunner.step does
        if guard:
            guard.before_forward()
        with autocast:
            loss, stats, after = model(x, x, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if guard:
            bad = guard.step_is_bad(loss, stats, next(counter))
            if guard.mode == "skip" and bool(bad):
                raise RuntimeError("non-finite step in the benchmark")
        opt.step()
        model.apply_step(after)

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", nargs="+", default=["resnet18"])
    ap.add_argument("--method", nargs="+", default=["isd"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--fp32", action="store_true", help="also measure without bf16/channels_last")
    ap.add_argument("--guard", nargs="+", default=["none"], choices=["none", "stop", "skip"],
                    help="non-finite guard modes to measure (first mode of each row set)")
    ap.add_argument("--out")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    rows = []
    for arch in args.arch:
        for method in args.method:
            modes = [("bf16+channels_last" if cuda else "fp32", cuda, cuda)] + ([("fp32", False, False)] if args.fp32 else [])
            for mode, bf16, cl in modes:
                for guard in args.guard if mode != "fp32" or not cuda else ["none"]:
                    ips = measure(method, arch, args.size, args.batch, args.steps, device, bf16, cl, guard_mode=guard)
                    rows.append({"arch": arch, "method": method, "size": args.size, "batch": args.batch,
                                 "mode": mode, "guard": guard, "images_per_s": round(ips, 1)})
                    print(json.dumps(rows[-1]), flush=True)
    info = {"device": torch.cuda.get_device_name() if cuda else f"cpu x{torch.get_num_threads()}",
            "torch": torch.__version__, "rows": rows}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(info, fh, indent=1)


if __name__ == "__main__":
    main()
