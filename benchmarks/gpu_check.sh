#!/usr/bin/env bash
# One prepared speed check for a machine with a GPU (about 8 minutes; every input is made there):
#   1. `isd bench` (with torch.profiler tables of its eager settings in OUTDIR/profiles: what limits each): ISD
#      ResNet-18 at 224 px from a synthetic JPEG folder (compute, data, end to end) with the
#      device pipeline (JPEGs decoded and augmented on the GPU, the default there) and the workers' PIL pipeline,
#      ISD+ ResNet-50 compute only, and isd-r18-fmnist (compute, end to end) eager and with
#      compile=reduce-overhead (CUDA graphs; its first step, the compilation, timed apart), with MFU;
#   2. the original code beside isd on the same JPEG folder (benchmarks/vs_original.py, train_isd.py), and the
#      operations each step dispatches, by phase (benchmarks/step_ops.py: fused SGD there);
#   3. one results cell (benchmarks/gpu_results.sh continues the committed grids) with what time is left.
# Results land in OUTDIR as JSON with provenance; copy them to benchmarks/results/ to commit them.
# The machine needs the data and the original code beside the tree, e.g. (git-ignored, carried):
#   cp /usr/share/datasets/fashion-mnist/*.gz .data/fashion-mnist/; cp -r ../shared/reference/original-isd .data/
#   usage: ISD_GIT_COMMIT=<commit> bash benchmarks/gpu_check.sh OUTDIR [FASHION_MNIST_DIR] [ORIGINAL_DIR]
set -u
out=${1:?usage: gpu_check.sh OUTDIR [FASHION_MNIST_DIR] [ORIGINAL_DIR]}
fmnist=${2:-.data/fashion-mnist}; original=${3:-.data/original-isd}
export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p "$out"
start=$(date +%s)
python3 -m isd bench --method isd --arch resnet18 --size 224 --batch 256 --steps 30 --synthetic-images 8192 \
  --set num_workers=14 --set data_pipeline=device --profile "$out/profiles" --out "$out/bench_r18_224.json" \
  > "$out/bench.log" 2>&1
python3 -m isd bench --method isd --arch resnet18 --size 224 --batch 256 --steps 20 --synthetic-images 8192 \
  --modes data e2e --set num_workers=14 --set data_pipeline=workers --out "$out/bench_r18_224_workers.json" \
  >> "$out/bench.log" 2>&1
python3 -m isd bench --method isd-plus --arch resnet50 --size 224 --batch 256 --modes compute --steps 20 \
  --set queue_size=128000 --out "$out/bench_r50_224.json" >> "$out/bench.log" 2>&1
python3 -m isd bench "$fmnist" --dataset fashion-mnist --recipe isd-r18-fmnist --modes compute e2e --steps 100 \
  --profile "$out/profiles" --out "$out/bench_fmnist.json" >> "$out/bench.log" 2>&1
timeout 240 python3 -m isd bench "$fmnist" --dataset fashion-mnist --recipe isd-r18-fmnist --modes compute e2e \
  --steps 100 --set compile=reduce-overhead --out "$out/bench_fmnist_compiled.json" >> "$out/bench.log" 2>&1
if [ -f "$original/train_isd.py" ]; then
  timeout 240 python3 benchmarks/vs_original.py --original "$original" --images 12800 --batch 256 --workers 14 \
    --queue 16384 --out "$out/vs_original_gpu.json" > "$out/vs_original.log" 2>&1
fi
timeout 60 python3 benchmarks/step_ops.py --recipe isd-r18-fmnist --data "$fmnist" --device cuda --out "$out/step_ops_gpu.json" \
  > "$out/step_ops.log" 2>&1
left=$(( 470 - ($(date +%s) - start) ))
if [ "$left" -gt 120 ]; then
  DEADLINE=$left bash benchmarks/gpu_results.sh "$out/cells" "$fmnist" > "$out/cells.log" 2>&1
fi
cat "$out/bench.log"; tail -2 "$out/vs_original.log" 2>/dev/null; echo "seconds: $(( $(date +%s) - start ))"
