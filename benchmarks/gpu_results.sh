#!/usr/bin/env bash
# Results cells on one GPU, several at once: a 28 px run is bound by kernel launches and leaves most of an
# H100/H200 idle, so 7 processes share it (measured on an H200: ~5,700 img/s each, ~4x one process's total).
# Continues the committed grids: cells whose result.json is already under benchmarks/results/experiments/ are
# skipped, the rest run in the plans' order (balanced gpu budget with 5 workers, the unbalanced draws with 2),
# until DEADLINE seconds have passed; unfinished cells stop with a checkpoint. Every 60 s, and at the end, the
# finished cells' files are packed into OUTDIR/results.tgz (so a call cut short still returns them).
#   usage: ISD_GIT_COMMIT=<commit of the tree> DEADLINE=450 bash benchmarks/gpu_results.sh OUTDIR [DATA]
#   then:  tar xzf OUTDIR/results.tgz && cp -rn runs/gpu/* benchmarks/results/experiments/ (result.json files)
set -u
out=${1:?usage: gpu_results.sh OUTDIR [DATA]}; data=${2:-.data/fashion-mnist}; deadline=${DEADLINE:-450}
export PYTHONPATH=src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 ISD_CONCURRENT_CELLS=7
exp=runs/gpu
committed=benchmarks/results/experiments
mkdir -p "$out" "$exp"
for name in fmnist-balanced-gpu fmnist-unbalanced-gpu; do  # finished cells are not run again
  for cell in "$committed/$name"/*/; do
    [ -f "$cell/result.json" ] && mkdir -p "$exp/$name/$(basename "$cell")" && cp "$cell/result.json" "$exp/$name/$(basename "$cell")/"
  done
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)" >> "$out/gpu.txt"

pack() {
  find $exp \( -name result.json -o -name knn_history.json -o -name config.yaml -o -name log.jsonl \) -print0 \
    | tar czf "$out/results.tmp.tgz" --null -T - && mv "$out/results.tmp.tgz" "$out/results.tgz"
}
(while sleep 60; do pack; done) &
packer=$!

timeout -k 40 -s TERM "$deadline" python3 -m isd experiment fmnist-balanced "$data" --budget gpu --jobs 5 \
  --no-report --out $exp/fmnist-balanced-gpu > "$out/balanced.log" 2>&1 &
balanced=$!
timeout -k 40 -s TERM "$deadline" python3 -m isd experiment fmnist-unbalanced "$data" --budget gpu --jobs 2 \
  --no-report --out $exp/fmnist-unbalanced-gpu > "$out/unbalanced.log" 2>&1 &
unbalanced=$!
wait $balanced $unbalanced
kill $packer 2>/dev/null
pack
(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv; date) >> "$out/gpu.txt" 2>&1
ls $exp/*/*/result.json | wc -l
