#!/usr/bin/env bash
# One device session: GPU-vs-CPU equality tests, then the README's main command timed on
# 2 CPU cores (taskset, no GPU) and on the GPU. Run from the repository root on a machine
# with CUDA; results go to $OUT (default ./device-out).
#   bash benchmarks/device_check.sh
set -uo pipefail
OUT=${OUT:-device-out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then  # packages the machine lacks, carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 EMQ_CACHE_DIR=/tmp/emq-cache
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
python3 -m pytest -q -p no:cacheprovider tests/test_search_fast_eval.py tests/test_stats.py -k "cuda or gpu or match" 2>&1 | tail -4
start=$(date +%s)
CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 timeout ${CPU_LIMIT:-420} taskset -c 0,1 \
  python3 cli.py search mq-digits --out /tmp/run-cpu2 > "$OUT/run-cpu2.log" 2>&1
echo "README main command on 2 cores: rc=$? wall=$(( $(date +%s) - start )) s"
cp /tmp/run-cpu2/summary.md /tmp/run-cpu2/log.jsonl "$OUT/" 2>/dev/null
tail -n 25 "$OUT/run-cpu2.log" | grep -v "it/s\|s/net" | tail -n 20
