"""Exact kNN search time on random unit features: N train x M queries x D dims, k = 20.

    PYTHONPATH=src python benchmarks/knn_speed.py --train 60000 --test 10000 --dim 512
"""

from __future__ import annotations

import argparse
import json

import torch

from isd.eval.knn import knn_evaluate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=60000)
    ap.add_argument("--test", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    train = torch.randn(args.train, args.dim, generator=g).to(args.device)
    test = torch.randn(args.test, args.dim, generator=g).to(args.device)
    train_y = torch.randint(0, args.classes, (args.train,), generator=g).to(args.device)
    test_y = torch.randint(0, args.classes, (args.test,), generator=g).to(args.device)
    times = []
    for _ in range(args.repeat):
        result = knn_evaluate(train, train_y, test, test_y, ks=(1, 20), num_classes=args.classes)
        times.append(result["search_seconds"])
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(json.dumps({"device": device, "train": args.train, "test": args.test, "dim": args.dim,
                      "search_seconds_min": round(min(times), 3), "search_seconds_all": [round(t, 3) for t in times]}))


if __name__ == "__main__":
    main()
