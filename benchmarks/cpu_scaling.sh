#!/usr/bin/env bash
# images/s of 1 vs 2 processes on this machine's CPUs (gloo), 1 epoch of the demo recipe on Fashion-MNIST.
set -e
for n in 1 2; do
  rm -rf /tmp/isd_scaling_$n
  torchrun --nproc_per_node $n -m isd train --recipe isd-fmnist-demo --epochs 1 --device cpu \
    --set eval_every=0 --set print_freq=50 --run-dir /tmp/isd_scaling_$n > /dev/null 2>&1
  python3 - "$n" <<'PY'
import json, sys
n = sys.argv[1]
rows = [json.loads(l) for l in open(f"/tmp/isd_scaling_{n}/log.jsonl") if '"train"' in l]
steady = rows[1:]  # the first window includes start-up
ips = sum(r["images_per_s"] for r in steady) / len(steady)
print(json.dumps({"processes": int(n), "images_per_s": round(ips, 1), "windows": len(steady)}))
PY
done
