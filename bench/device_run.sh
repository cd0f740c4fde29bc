#!/usr/bin/env bash
# One call on the lent GPU machine that runs every GPU check and benchmark, so a session spends one machine start:
#   ../shared/device/prepare        (here, once)
#   device run, carry [".device"]:  .device/on-device bash bench/device_run.sh
# Writes under $OUT (or bench/results when OUT is unset): the GPU test log and the JSON of each benchmark.
set -uo pipefail
out=${OUT:-bench/results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv || true
nproc
python -m pytest -q tests/gpu -p no:cacheprovider 2>&1 | tee "$out/gpu-tests.log" | tail -5
python bench/host_copy.py --seconds 1.0 --threads 1,2,4,8 --out "$out" | tail -8
python bench/gpu_engine.py --reps 4 --daemon 15000 --daemon-workers 1,2 --daemon-copy-threads 1,0,10 \
    --daemon-in-flight 1,4 --out "$out" 2>&1 | tail -30
python bench/fitting.py --gpu --frames 100 --out "$out" 2>&1 | tail -12
python bench/fitting_daemon.py --frames 10000 --workers 1,2 --out "$out" 2>&1 | tail -8
ls -la "$out"
