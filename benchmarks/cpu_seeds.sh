#!/usr/bin/env bash
# The cpu-seeds grids of issue 19, one training process at a time on a 2-core CPU, in the order that completes
# the paper's claims soonest: the unbalanced ISD/MoCo-v2 pairs draw by draw, then the balanced methods seed by
# seed; then both again at 1/8 width (budget cpu-seeds-w8), where a few minutes leave the random start. Every
# cell is resumable: run it again (in this or a later session) and it skips what is finished and resumes what
# was stopped. Results land in benchmarks/results/experiments/*-cpu-seeds*; `isd report --readme
# docs/results.md` then regenerates their tables.
#   bash benchmarks/cpu_seeds.sh            # everything still missing
#   bash benchmarks/cpu_seeds.sh balanced   # one of the grids (unbalanced, balanced, balanced-w8, unbalanced-w8)
set -euo pipefail
cd "$(dirname "$0")/.."
ISD=${ISD:-.venv/bin/isd}
OUT=benchmarks/results/experiments
which=${1:-all}
if [[ $which == all || $which == unbalanced ]]; then
  for draw in 1 2 3 4 5; do
    $ISD experiment fmnist-unbalanced --budget cpu-seeds --device cpu --only draw=$draw \
      --out $OUT/fmnist-unbalanced-cpu-seeds
  done
fi
if [[ $which == all || $which == balanced ]]; then
  for seed in 0 1 2; do
    $ISD experiment fmnist-balanced --budget cpu-seeds --device cpu \
      --only seed=$seed,method=isd,method=byol,method=moco --out $OUT/fmnist-balanced-cpu-seeds
  done
  for seed in 0 1 2; do
    $ISD experiment fmnist-balanced --budget cpu-seeds --device cpu --only seed=$seed \
      --out $OUT/fmnist-balanced-cpu-seeds
  done
fi
if [[ $which == all || $which == balanced-w8 ]]; then
  # the balanced claims at 1/8 width, where four epochs leave the random start (budget cpu-seeds-w8)
  for seed in $(seq 0 9); do
    $ISD experiment fmnist-balanced --budget cpu-seeds-w8 --device cpu --out $OUT/fmnist-balanced-cpu-seeds-w8 \
      --only seed=$seed,method=isd,method=isd-plus,method=byol,method=moco,method=random-init,method=raw-pixels
  done
  $ISD experiment fmnist-balanced --budget cpu-seeds-w8 --device cpu --out $OUT/fmnist-balanced-cpu-seeds-w8
fi
if [[ $which == all || $which == unbalanced-w8 ]]; then
  for draw in $(seq 1 20); do
    $ISD experiment fmnist-unbalanced --budget cpu-seeds-w8 --device cpu --only draw=$draw \
      --out $OUT/fmnist-unbalanced-cpu-seeds-w8
  done
fi
$ISD report $OUT/fmnist-unbalanced-cpu-seeds $OUT/fmnist-balanced-cpu-seeds $OUT/fmnist-balanced-cpu-seeds-w8 \
  $OUT/fmnist-unbalanced-cpu-seeds-w8 2>/dev/null || true
