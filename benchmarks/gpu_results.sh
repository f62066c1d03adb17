#!/usr/bin/env bash
# Results cells on one GPU, several at once (a 28 px run leaves most of an H100/H200 idle: it is bound by kernel
# launches). Runs the balanced Fashion-MNIST grid at the gpu budget (seed 0 first: ISD, ISD+, BYOL-asym,
# MoCo-v2, the supervised ceiling, the two floors; then further seeds while time is left) with 5 worker
# processes, and the first unbalanced draw (ISD and MoCo-v2) with 2 more, until DEADLINE seconds have passed.
# Unfinished cells stop with a checkpoint (a later run of the same command resumes them).
#   usage: ISD_GIT_COMMIT=<commit of the tree> DEADLINE=540 bash benchmarks/gpu_results.sh OUTDIR [DATA]
# OUTDIR receives results.tgz (every cell's result.json, knn_history.json, config.yaml, log.jsonl) and logs.
set -u
out=${1:?usage: gpu_results.sh OUTDIR [DATA]}; data=${2:-.data/fashion-mnist}; deadline=${DEADLINE:-540}
export PYTHONPATH=src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 ISD_CONCURRENT_CELLS=7
exp=runs/gpu
mkdir -p "$out" "$exp"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)" >> "$out/gpu.txt"
timeout -s TERM "$deadline" python3 -m isd experiment fmnist-balanced "$data" --budget gpu --jobs 5 \
  --no-report --out $exp/fmnist-balanced-gpu > "$out/balanced.log" 2>&1 &
timeout -s TERM "$deadline" python3 -m isd experiment fmnist-unbalanced "$data" --budget gpu --jobs 2 \
  --only draw=1 --no-report --out $exp/fmnist-unbalanced-gpu > "$out/unbalanced.log" 2>&1 &
wait
sleep 3
(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv; date) >> "$out/gpu.txt" 2>&1
find $exp \( -name result.json -o -name knn_history.json -o -name config.yaml -o -name log.jsonl \
  -o -name 'worker_*.log' \) -print0 | tar czf "$out/results.tgz" --null -T -
ls $exp/*/*/result.json 2>/dev/null
