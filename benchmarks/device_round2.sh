#!/usr/bin/env bash
# Device session 2: cost of the non-finite guard, 1-GPU training images/s, SIGTERM on a GPU. Results under $OUT.
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv > $OUT/gpu.txt
python3 benchmarks/throughput.py --arch resnet18 --method isd --guard none stop skip --steps 40 \
  --out $OUT/thru_guard_r18.json > $OUT/thru_guard.log 2>&1
python3 benchmarks/throughput.py --arch resnet50 --method isd-plus --guard none stop --steps 20 \
  --out $OUT/thru_guard_r50.json >> $OUT/thru_guard.log 2>&1
for launcher in "python3 -m isd" "torchrun --nproc_per_node 1 -m isd"; do
  rm -rf /tmp/gpu1; $launcher train --recipe isd-r18-fmnist .data/fashion-mnist --epochs 2 --run-dir /tmp/gpu1 \
    --set eval_every=0 --set print_freq=20 > /dev/null 2>> $OUT/gpu1.err
  python3 - "$launcher" >> $OUT/gpu1.jsonl <<'PY'
import json, sys
rows = [json.loads(l) for l in open("/tmp/gpu1/log.jsonl") if '"train"' in l]
steady = [r for r in rows if r["epoch"] == 2]
print(json.dumps({"launcher": sys.argv[1], "images_per_s": round(sum(r["images_per_s"] for r in steady) / len(steady), 1),
                  "windows": len(steady)}))
PY
done
python3 benchmarks/preempt_check.py --data .data/fashion-mnist --out $OUT/preempt_gpu.json > $OUT/preempt.log 2>&1
tail -3 $OUT/thru_guard.log; cat $OUT/gpu1.jsonl $OUT/preempt_gpu.json; tail -3 $OUT/gpu1.err
