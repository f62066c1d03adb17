#!/usr/bin/env bash
# The CIFAR-10 CPU grids of issue 31 (and the distillation evidence of issue 32), one training process at a time on
# a 2-core CPU, in the order that resolves the most soonest: the recipe study on the validation split; the
# balanced grid's ISD and MoCo-v2 (the paper's main ordering) on every seed; the long-tailed draws (ISD - MoCo-v2
# on the tail); the rest of the balanced grid (BYOL-asym, ISD+, supervised on seeds 1-4); and the distillation
# cells, which use the balanced grid's supervised seed-0 encoder as their teacher.
# Every cell is resumable: run it again (in this or a later session) and it skips what is finished and resumes
# what was stopped. Results land in benchmarks/results/experiments/*; `isd report --readme README.md` and
# `isd report --readme docs/results.md` then regenerate their tables.
#   bash benchmarks/cifar10_cpu.sh [DATA]            # everything still missing (DATA default .data/cifar10)
#   bash benchmarks/cifar10_cpu.sh DATA balanced     # one part: study, balanced (all of it), lt, distill,
#                                                    # or balanced-rest (BYOL-asym, ISD+, supervised seeds 1-4)
set -euo pipefail
cd "$(dirname "$0")/.."
ISD=${ISD:-.venv/bin/isd}
OUT=benchmarks/results/experiments
data=${1:-.data/cifar10}
which=${2:-all}
case $which in
  all | study | balanced | lt | balanced-rest | distill) ;;
  *) echo "unknown part '$which': use all, study, balanced, lt, balanced-rest or distill" >&2; exit 2 ;;
esac
if [[ ! -d $data/train && ! -d $data/cifar-10-batches-py ]]; then
  echo "no CIFAR-10 in $data: tar -xzf ../shared/data/cifar10/cifar10-jpeg.tar.gz -C $data" >&2
  exit 2
fi
cells() {  # PLAN FOLDER [isd experiment flags]: the plan's cpu budget into $OUT/FOLDER
  local plan=$1 folder=$2
  shift 2
  $ISD experiment "$plan" "$data" --budget cpu --device cpu --out "$OUT/$folder" "$@"
}
balanced() { cells cifar10-balanced cifar10-balanced-cpu --only "$1"; }  # one --only filter's balanced cells
wanted() { [[ $which == all ]] || [[ " $* " == *" $which "* ]]; }  # is the part asked for among these names?
if wanted study; then
  cells benchmarks/plans/cifar10-cpu-recipe-study.yaml cifar10-cpu-recipe-study-cpu
fi
if wanted balanced; then
  # ISD and MoCo-v2 (the paper's main ordering) on every seed first; supervised seed 0 is the distillation
  # cells' teacher; raw pixels run once (their kNN does not depend on the seed)
  balanced seed=0,method=supervised,method=raw-pixels
  for seed in 0 1 2 3 4; do balanced seed=$seed,method=isd,method=moco,method=random-init; done
fi
if wanted lt; then
  for draw in 1 2 3 4 5; do cells cifar10-lt cifar10-lt-cpu --only draw=$draw; done
fi
if wanted balanced balanced-rest; then
  # the rest of the ordering (BYOL-asym, ISD+), then the supervised ceiling on the other seeds
  for seed in 0 1 2 3 4; do balanced seed=$seed,method=byol,method=isd-plus; done
  for seed in 1 2 3 4; do balanced seed=$seed,method=supervised; done
fi
if wanted distill; then
  cells benchmarks/plans/cifar10-distill-cpu.yaml cifar10-distill-cpu-cpu
fi
$ISD report $OUT/cifar10-* 2>/dev/null | tail -40 || true
