#!/usr/bin/env bash
# The GPU training measurements as one device call (the device tool allows 10 minutes per call):
#   1. configs/speedrun.yaml once: time to accuracy, read from its per-validation wall-clock stamps;
#   2. configs/resnet-long.yaml for seeds 0, 1 and 2 side by side on the one GPU (small nets leave it idle
#      most of the time, so three processes cost little more than one).
#
#   bench/gpu_runs.sh prepare   here: the wheels the device image lacks (LightningCLI's jsonargparse and
#                               its extras) and the four dataset files, into the ignored folder .gpu/
#   bench/gpu_runs.sh smoke     here, after prepare, on the CPU: the device part for 3 steps per run
#   device tool: run(command="bench/gpu_runs.sh device", carry=[".gpu"], timeout_s=600)
#   (`make gpu-prepare` and `make gpu-smoke` run the first two.)
#
# What comes back: $OUT/gpu-runs.tar.gz (the run directories) and one log per run. Then here:
#   mkdir -p runs/gpu && tar -xzf <files_at>/gpu-runs.tar.gz -C runs/gpu
#   .venv/bin/python bench/train_speed.py runs/gpu/runs/*/version_* --update-docs
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: bench/gpu_runs.sh prepare|smoke|device}

if [[ $mode == prepare ]]; then
  rm -rf .gpu && mkdir -p .gpu/whl .gpu/data
  # Pure-Python wheels, so they install on the device's Python 3.12 whatever Python runs this.
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl \
    jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0
  data_dir=$(.venv/bin/python -c "from fashionstream.classifier import fashion_mnist_files as f; print(f.find_data_dir())")
  cp "$data_dir"/*-ubyte.gz .gpu/data/
  du -sh .gpu
  exit 0
fi

extra=() speed_cap=() long_cap=()
if [[ $mode == device ]]; then
  # Wall-clock caps (Lightning stops at the end of the step, then tests): the call's limit is 10 minutes and
  # the tarball is written only at the end, so a run that is slower than hoped must not take the rest down.
  speed_cap=(--trainer.max_time 00:00:01:30)
  long_cap=(--trainer.max_time 00:00:06:30)
  [[ -d .gpu/whl ]] || { echo "no .gpu/: run 'bench/gpu_runs.sh prepare' here and carry .gpu" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
  py=python3
  out=${OUT:?OUT is set by the device tool}
  nvidia-smi -L || true
elif [[ $mode == smoke ]]; then
  export PYTHONPATH=$PWD/src
  py=.venv/bin/python
  out=${OUT:-$(mktemp -d)}
  extra=(--trainer.accelerator cpu --trainer.max_steps 3 --trainer.limit_val_batches 1
         --trainer.limit_test_batches 1 --data.train_subset 2048)
else
  echo "unknown mode '$mode': prepare, smoke or device" >&2; exit 2
fi
export FASHION_MNIST_DIR=$PWD/.gpu/data PYTHONUNBUFFERED=1
mkdir -p "$out/runs"

train() {  # one `fashionstream train fit` writing its run directory under $out/runs
  "$py" -m fashionstream.cli train fit "$@" --trainer.enable_progress_bar false \
    --trainer.logger.init_args.save_dir "$out/runs" "${extra[@]}"
}

failed=0
echo "== speedrun $(date -u +%T)"
train --config configs/speedrun.yaml "${speed_cap[@]}" >"$out/speedrun.log" 2>&1 || { failed=1; echo "speedrun failed"; }
tail -n 3 "$out/speedrun.log"
echo "== resnet-long, seeds 0 1 2 $(date -u +%T)"
pids=()
for seed in 0 1 2; do
  # One logger name per seed: runs starting together would otherwise race for the same version_N folder.
  train --config configs/resnet-long.yaml --seed_everything "$seed" --trainer.logger.init_args.name "resnet-long-s$seed" \
    "${long_cap[@]}" >"$out/resnet-long-$seed.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || { failed=1; echo "a resnet-long run failed"; }; done
for seed in 0 1 2; do tail -n 2 "$out/resnet-long-$seed.log"; done
echo "== done $(date -u +%T)"
tar -C "$out" -czf "$out/gpu-runs.tar.gz" runs && rm -rf "$out/runs"
exit "$failed"
