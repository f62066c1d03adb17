#!/usr/bin/env bash
# The CPU speed check behind docs/results.md's CPU tables (about 25 minutes on 2 cores; nothing else should run):
#   1. the original code beside isd on one JPEG folder (benchmarks/vs_original.py, train_isd.py): isd with its
#      defaults, then with --amp off (fp32); then train_byol.py and train_isd_plus.py with isd's defaults;
#   2. `isd bench`, ResNet-18 ISD at 224 px and the CPU demo's recipe at 28 px: fp32 / bf16 x contiguous /
#      channels_last; the two pipelines for image files; torch.compile (networks and views) on the demo's recipe;
#   3. benchmarks/cpu_bf16.py (the backbone alone, and whether torch sees native bf16);
#   4. benchmarks/step_ops.py (operations per training step, by phase: where a GPU step's launches go).
# Results land in OUTDIR (default benchmarks/results) as JSON with provenance.
#   usage: bash benchmarks/cpu_check.sh [OUTDIR] [FASHION_MNIST_DIR]
set -eu
out=${1:-benchmarks/results}; fmnist=${2:-}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
r18=(--method isd --arch resnet18 --size 224 --batch 32 --set num_workers=2 --set queue_size=256 --steps 6
     --warmup 2 --device cpu)
demo=(--dataset fashion-mnist --recipe isd-fmnist-demo --steps 10 --warmup 3 --device cpu)
$py benchmarks/vs_original.py --images 320 --batch 32 --workers 2 --repeat 2 --scripts train_isd.py \
  --out "$out/vs_original_cpu_native_bf16.json"
$py benchmarks/vs_original.py --images 320 --batch 32 --workers 2 --repeat 2 --scripts train_isd.py \
  --isd-amp off --out "$out/vs_original_cpu_native_bf16_fp32.json"
$py benchmarks/vs_original.py --images 320 --batch 32 --workers 2 --repeat 2 --scripts train_byol.py \
  train_isd_plus.py --out "$out/vs_original_cpu_byol_isd_plus.json"
$py -m isd bench "${r18[@]}" --modes compute e2e --vary amp=off,bf16 --vary channels_last=off,on \
  --out "$out/bench_cpu_r18_224_precision.json"
$py -m isd bench $fmnist "${demo[@]}" --modes compute e2e --vary amp=off,bf16 --vary channels_last=off,on \
  --out "$out/bench_cpu_fmnist_demo_precision.json"
$py -m isd bench "${r18[@]}" --modes data e2e --vary data_pipeline=workers,device \
  --out "$out/bench_cpu_r18_224_pipelines.json"
$py -m isd bench $fmnist "${demo[@]}" --modes compute data e2e --vary compile=off,default \
  --out "$out/bench_cpu_fmnist_demo_compile.json"
$py benchmarks/cpu_bf16.py --out "$out/cpu_bf16_native.json"
$py benchmarks/step_ops.py --folder --out "$out/step_ops_cpu.json"
