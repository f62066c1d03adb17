"""Does bf16 pay on this CPU? ResNet-18 forward + backward at 224 px, fp32 and bf16 autocast, contiguous and
channels_last, with what torch reports of the CPU's native bf16 support (AVX512-BF16, AMX).

    python benchmarks/cpu_bf16.py --out benchmarks/results/cpu_bf16.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from isd.experiments.provenance import provenance  # noqa: E402
from isd.train.loop import cpu_has_native_bf16  # noqa: E402


def images_per_s(model: torch.nn.Module, x: torch.Tensor, bf16: bool, repeats: int) -> float:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(x).float().sum().backward()  # warm-up: oneDNN picks and caches its kernels
        start = time.perf_counter()
        for _ in range(repeats):
            model(x).float().sum().backward()
    return repeats * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    x = torch.randn(args.batch, 3, args.size, args.size)
    rows = []
    for layout, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        model, xs = model.to(memory_format=fmt), x.contiguous(memory_format=fmt)
        for bf16 in (False, True):
            rows.append({"layout": layout, "precision": "bf16" if bf16 else "fp32",
                         "images_per_s": round(images_per_s(model, xs, bf16, args.repeats), 2)})
            print(json.dumps(rows[-1]), flush=True)
    result = {**provenance(torch.device("cpu")), "native_bf16": cpu_has_native_bf16(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "setup": {"arch": "resnet18", "batch": args.batch, "size": args.size, "repeats": args.repeats,
                        "measured": "forward + backward of the backbone (a training step's bulk)"},
              "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print(f"native bf16: {result['native_bf16']} (capability {result['cpu_capability']})")


if __name__ == "__main__":
    main()
