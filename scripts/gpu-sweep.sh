#!/usr/bin/env bash
# Many-seed exploration of LR-LoRA settings against LoRA on a GPU machine: one `lrlora train`
# per (task, config, seed), JOBS at a time, each run's metrics.json and ranks.json copied to
# OUT_DIR/<run>/. Runs are listed seed by seed, so an early stop (STOP_AFTER seconds) leaves
# whole seeds of every config. SST-2 and STS-B use the benchmark matrix's final-run sizing
# (bench/suites.py); MRPC and RTE a larger one (400 steps of 32), at which they learn.
#
#   bash scripts/gpu-sweep.sh MODEL_DIR DATA_DIR OUT_DIR [JOBS] [STOP_AFTER]
# SWEEP_SEEDS: the seeds (default 0-7); SWEEP_ONLY: a regex the run names must match;
# SWEEP_EXTRA: flags appended to every run (e.g. "--max-steps 2" for a smoke test).
set -uo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage}; data=${2:?usage}; out=${3:?usage}; jobs=${4:-12}; stop=${5:-240}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
mkdir -p "$out"
declare -A size=(
  [sst2]="--max-steps 400 --batch-size 16 --max-length 64 --train-limit 6400"
  [stsb]="--max-steps 200 --batch-size 8 --max-length 128"
  [mrpc]="--max-steps 400 --batch-size 32 --max-length 128"
  [rte]="--max-steps 400 --batch-size 32 --max-length 128"
)
# config name | method and flags; every learning rate is the one the CPU matrix tuned
# (SST-2, STS-B: 2e-3 for both), or for MRPC/RTE each method at two rates. "lr-lora" is
# LR-LoRA as it was when the sweep ran (re-balancing every 50 steps, the default then), so
# every LR-LoRA config names --rebalance-every and reruns the same way under later defaults.
rb50="--rebalance-every 50"
configs_small=(
  "lora|--method lora --lr 2e-3"
  "lr-lora|--method lr-lora --lr 2e-3 $rb50"
  "lr-lora+rank_lr=0.1|--method lr-lora --lr 2e-3 $rb50 --rank-lr 0.1"
  "lr-lora+rank_lr=0.3|--method lr-lora --lr 2e-3 $rb50 --rank-lr 0.3"
  "lr-lora+rebalance_every=0|--method lr-lora --lr 2e-3 --rebalance-every 0"
  "lr-lora+scaling=budget|--method lr-lora --lr 2e-3 $rb50 --scaling budget"
)
configs_large=(
  "lora-lr1e-3|--method lora --lr 1e-3"
  "lora-lr2e-3|--method lora --lr 2e-3"
  "lr-lora-lr2e-3|--method lr-lora --lr 2e-3 $rb50"
  "lr-lora-lr4e-3|--method lr-lora --lr 4e-3 $rb50"
)
list=$(mktemp)
for seed in ${SWEEP_SEEDS:-0 1 2 3 4 5 6 7}; do
  for task in sst2 stsb mrpc rte; do
    if [[ $task == sst2 || $task == stsb ]]; then configs=("${configs_small[@]}")
    else configs=("${configs_large[@]}"); fi
    for c in "${configs[@]}"; do
      echo "$task-${c%%|*}-s$seed|--task $task ${c#*|} ${size[$task]} --seed $seed" >>"$list"
    done
  done
done
one() {
  name=${1%%|*}; flags=${1#*|}
  if python3 -m lrlora train $flags ${SWEEP_EXTRA:-} --model "$model" --data-dir "$data" \
      --output-dir "/tmp/sweep/$name" --overwrite >"/tmp/sweep-logs/$name.log" 2>&1; then
    mkdir -p "$out/$name" && cp "/tmp/sweep/$name/"{metrics,ranks,config}.json "$out/$name/"
  else
    echo "failed: $name"; tail -3 "/tmp/sweep-logs/$name.log"
  fi
}
if [[ -n ${SWEEP_ONLY:-} ]]; then grep -E -- "^(${SWEEP_ONLY})\|" "$list" >"$list.only"; mv "$list.only" "$list"; fi
export -f one; export model data out
mkdir -p /tmp/sweep /tmp/sweep-logs
echo "$(wc -l <"$list") runs, $jobs at a time, stopping after ${stop}s"
timeout "$stop" xargs -a "$list" -d '\n' -P "$jobs" -I{} bash -c 'one "$@"' _ {}
echo "finished: $(ls "$out" | wc -l) runs"
