#!/bin/bash
cd /work/wt/tenm3
D=benchmarks/results/scale-10m-sampler/diagnosis
echo "lock acquired $(date -u +%F\ %H:%M:%S)"; echo "uptime: $(uptime)"
timeout 400 .venv/bin/python $D/exact_inversion.py 20 200 none,nice10,nice0,idle,chunk65536-nice10,chunk65536-nice0,chunk65536-idle,none,nice10
echo "uptime: $(uptime)"; echo "end $(date -u +%H:%M:%S)"
