#!/usr/bin/env bash
# One device session: demo-recipe sweep, training throughput, GPU kNN speed. Results under $OUT.
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv > $OUT/gpu.txt
python3 benchmarks/knn_speed.py --train 1281167 --test 50000 --dim 512 --classes 1000 > $OUT/knn_gpu.json 2>&1
python3 benchmarks/throughput.py --arch resnet18 --method isd byol moco --fp32 --out $OUT/thru_r18.json > $OUT/thru_r18.log 2>&1
python3 benchmarks/throughput.py --arch resnet50 --method isd-plus byol --out $OUT/thru_r50.json > $OUT/thru_r50.log 2>&1
timeout 330 python3 benchmarks/demo_recipe_sweep.py --epochs 6 --data .data/fashion-mnist --out $OUT/sweep.json > $OUT/sweep.log 2>&1
tail -5 $OUT/*.log; cat $OUT/knn_gpu.json
