#!/usr/bin/env bash
# Results cells on one GPU, several at once: a 28-32 px run is bound by kernel launches and leaves most of an
# H100/H200 idle, so several processes share it (measured on an H200: ~5,700 img/s each, ~4x one process's total).
# CIFAR-10 first (the anchors' protocol: cifar10-balanced and cifar10-lt at budget gpu, ResNet-18 with the 3x3
# stem, 200 epochs of batch 512: by FLOPs about 10 minutes a cell alone on an H100, so a 15-minute lease finishes
# at most the first cells and a longer lease the grid), then the Fashion-MNIST grids with the time left.
# Continues the committed grids: cells whose result.json is already under benchmarks/results/experiments/ are
# skipped, the rest run in the plans' order until DEADLINE seconds have passed; unfinished cells stop with a
# checkpoint. Every 60 s, and at the end, the finished cells' files are packed into OUTDIR/results.tgz (so a call
# cut short still returns them).
#   usage: ISD_GIT_COMMIT=<commit of the tree> DEADLINE=450 bash benchmarks/gpu_results.sh OUTDIR [FMNIST] [CIFAR10]
#   then:  tar xzf OUTDIR/results.tgz && cp -rn runs/gpu/* benchmarks/results/experiments/ (result.json files)
set -u
out=${1:?usage: gpu_results.sh OUTDIR [FMNIST] [CIFAR10]}; data=${2:-.data/fashion-mnist}; cifar=${3:-.data/cifar10}
deadline=${DEADLINE:-450}
export PYTHONPATH=src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 ISD_CONCURRENT_CELLS=7
exp=runs/gpu
committed=benchmarks/results/experiments
mkdir -p "$out" "$exp"
started=$(date +%s)
for name in cifar10-balanced-gpu cifar10-lt-gpu fmnist-balanced-gpu fmnist-unbalanced-gpu; do  # finished: skipped
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

if [ -d "$cifar/train" ] || [ -d "$cifar/cifar-10-batches-py" ]; then  # the anchors' protocol first
  timeout -k 40 -s TERM "$deadline" python3 -m isd experiment cifar10-balanced "$cifar" --budget gpu --jobs 4 \
    --no-report --only method=isd,method=byol,method=moco,method=isd-plus --out $exp/cifar10-balanced-gpu \
    > "$out/cifar10.log" 2>&1 &
  cifar_run=$!
  timeout -k 40 -s TERM "$deadline" python3 -m isd experiment cifar10-lt "$cifar" --budget gpu --jobs 2 \
    --no-report --only draw=1 --out $exp/cifar10-lt-gpu > "$out/cifar10_lt.log" 2>&1 &
  wait $cifar_run $!
fi
deadline=$(( deadline - ($(date +%s) - started) ))  # what is left for the Fashion-MNIST grids

[ "$deadline" -gt 60 ] && timeout -k 40 -s TERM "$deadline" python3 -m isd experiment fmnist-balanced "$data" --budget gpu --jobs 5 \
  --no-report --out $exp/fmnist-balanced-gpu > "$out/balanced.log" 2>&1 &
balanced=$!
[ "$deadline" -gt 60 ] && timeout -k 40 -s TERM "$deadline" python3 -m isd experiment fmnist-unbalanced "$data" --budget gpu --jobs 2 \
  --no-report --out $exp/fmnist-unbalanced-gpu > "$out/unbalanced.log" 2>&1 &
unbalanced=$!
wait $balanced $unbalanced
kill $packer 2>/dev/null
pack
(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv; date) >> "$out/gpu.txt" 2>&1
ls $exp/*/*/result.json | wc -l
