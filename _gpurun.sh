set -u
o=$OUT
T0=$(date +%s)
python -m pytest -q tests/gpu -p no:cacheprovider 2>&1 | tee $o/gpu-tests.log | tail -4
echo "tests $(( $(date +%s)-T0 )) s"
python bench/fitting.py --gpu --frames 100 --out $o 2>&1 | tail -6
echo "fitting $(( $(date +%s)-T0 )) s"
for slots in 32 128; do
  mkdir -p $o/s$slots
  RINGSTREAM_TRANSPORT_RING_SLOTS=$slots python bench/gpu_engine.py --no-engine --daemon 20000 --daemon-workers 2 \
    --daemon-copy-threads 0 --daemon-in-flight 4 --daemon-settings default,fast-path --out $o/s$slots 2>&1 | tail -5
  echo "slots $slots $(( $(date +%s)-T0 )) s"
done
python bench/fitting_daemon.py --source replay --frames 20000 --workers 2,3 --settings default,fast-path --out $o 2>&1 | tail -12
echo "all $(( $(date +%s)-T0 )) s"
