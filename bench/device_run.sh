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
# the host copy into the ring: plain glibc memcpy, then with the threshold the ingest runs with
python bench/host_copy.py --seconds 1.0 --threads 1,4,8 --out "$out" --tag=-plain | tail -5
GLIBC_TUNABLES=glibc.cpu.x86_non_temporal_threshold=0x40000 \
    python bench/host_copy.py --seconds 1.0 --threads 1,4,8 --out "$out" --tag=-nontemporal | tail -5
# each daemon case twice: the default settings (the headline row), then the fast path (OmegaSumFrames -1, no zarr)
python bench/gpu_engine.py --reps 4 --daemon 20000 --daemon-workers 1,2 --daemon-copy-threads 0 \
    --daemon-in-flight 4 --daemon-settings default,fast-path --daemon-timeline --out "$out" 2>&1 | tail -14
python bench/fitting.py --gpu --frames 100 --out "$out" 2>&1 | tail -12
python bench/fitting.py --micro --gpu --out "$out" 2>&1 | tail -12
python bench/fitting_daemon.py --frames 10000 --workers 1,2,3 --settings default,fast-path --out "$out" 2>&1 | tail -14
# 3 peaks a frame at the replay rate (the ingest only copies), with each worker's frames per fit call
python bench/fitting_daemon.py --source replay --frames 20000 --workers 2,3 --settings default,fast-path \
    --out "$out" 2>&1 | tail -10
ls -la "$out"
