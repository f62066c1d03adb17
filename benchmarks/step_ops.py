"""How many operations one training step dispatches, by phase: the views (augmentation), the forwards, loss and
backward, the optimizer, and the teacher update + enqueue. On a GPU each is (at least) one kernel launch, and a
small-image step is bound by launches, not arithmetic, so this count, measured on a CPU, says where a GPU step's
launches go. (On a CPU torch's SGD loops over the tensors; on a GPU isd uses its fused kernel: one launch.)
Beside each count, the host round trips: tensors made from Python data and values read back, each a blocking
copy on a GPU (image files' views also count the host-side crop boxes, which stay on the host there).

The views are counted as a GPU makes them: two views of one recipe as one batch (`both_views_as_one_batch`; a
CPU makes them one after the other).

    python benchmarks/step_ops.py --recipe isd-r18-fmnist --out benchmarks/results/step_ops_cpu.json
    python benchmarks/step_ops.py --folder --out ...   # ResNet-18 at 224 px, JPEGs decoded and augmented in batches
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import isd.data.batches as data_batches  # noqa: E402
from isd.config import build_config  # noqa: E402
from isd.data.synthetic import jpeg_folder  # noqa: E402
from isd.experiments.provenance import provenance  # noqa: E402
from isd.train.bench import OpCounter  # noqa: E402
from isd.train.loop import EpochRunner, build  # noqa: E402
from isd.train.runlog import RunLog  # noqa: E402


def in_phase(counter: OpCounter, name: str, fn):
    def wrapped(*args, **kwargs):
        before, counter.phase = counter.phase, name
        try:
            return fn(*args, **kwargs)
        finally:
            counter.phase = before
    return wrapped


def count_step(values: dict) -> dict:
    data_batches.both_views_as_one_batch = lambda device: True  # as on a GPU
    with tempfile.TemporaryDirectory(prefix="isd_ops_") as tmp:
        cfg = build_config(values.pop("recipe", None), {**values, "run_dir": tmp})
        setup = build(cfg, log=lambda _: None)
        loader = data_batches.batches_of(setup.source).two_views(cfg, setup.size, setup.device)
        runner = EpochRunner(setup, setup.model, loader, loader.steps_per_epoch(), RunLog(setup.run_dir, False))
        batches = loader.epoch(1)
        runner.step(next(batches), 0)  # warm: lazily built state (momentum buffers, the queue's cursor)
        counter = OpCounter()
        setup.optimizer.step = in_phase(counter, "optimizer", setup.optimizer.step)  # type: ignore[method-assign]
        setup.model.apply_step = in_phase(counter, "teacher+queue", setup.model.apply_step)  # type: ignore
        with counter:
            counter.phase = "views"
            batch = next(batches)
            counter.phase = "forward+loss+backward"
            runner.step(batch, 1)
        phases = {name: {"ops": sum(ops.values()), "host_round_trips": counter.round_trips(name),
                         "most": dict(ops.most_common(5))} for name, ops in counter.counts.items()}
        return {"recipe": cfg.recipe, "method": cfg.method, "arch": cfg.arch, "image_size": setup.size,
                "channels": setup.source.channels, "batch": cfg.batch_size, "pipeline": loader.pipeline,
                "device": str(setup.device), "views_as_on_a_gpu": True,
                "total_ops": sum(p["ops"] for p in phases.values()), "phases": phases}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="isd-r18-fmnist")
    ap.add_argument("--data", default="", help="the recipe's data folder (default: where isd looks for it)")
    ap.add_argument("--folder", action="store_true", help="also a synthetic JPEG folder at 224 px, batch 32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = [count_step({"recipe": args.recipe, "device": args.device, **({"data": args.data} if args.data else {})})]
    if args.folder:
        with tempfile.TemporaryDirectory(prefix="isd_ops_jpegs_") as tmp:
            jpeg_folder(Path(tmp), 128)
            rows.append(count_step({"method": "isd", "arch": "resnet18", "data": tmp, "batch_size": 32,
                                    "queue_size": 256, "num_workers": 0, "data_pipeline": "device",
                                    "device": args.device}))
    for row in rows:
        print(f"{row['recipe'] or row['method']} {row['image_size']} px x{row['channels']} ({row['pipeline']}): "
              f"{row['total_ops']} ops per step")
        for name, phase in row["phases"].items():
            print(f"  {name:22s} {phase['ops']:5d} ops, {phase['host_round_trips']} host round trips  {phase['most']}")
    if args.out:
        Path(args.out).write_text(json.dumps({**provenance(torch.device(args.device)), "results": rows}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
