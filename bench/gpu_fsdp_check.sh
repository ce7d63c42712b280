#!/usr/bin/env bash
# FSDP on a GPU, end to end on the smoke config (about 2 minutes): train with --trainer.strategy fsdp,
# resume, validate under FSDP and on the CPU (the checkpoint is an ordinary file), sample (greedy on the GPU =
# greedy on the CPU); then the same with
# fsdp_sharded, whose directory of shards validate consolidates; each run is also exported (lmproject export).
# STRATEGIES="fsdp_sharded" runs one of the two. MODEL_ARGS adds options to every command (e.g.
# MODEL_ARGS="--model.optimizer muon"). The first 30 steps of each FSDP run are also compared with the same
# 30 steps on one device without FSDP (train/loss of every step; bf16-mixed both ways, FSDP casting the
# weights where autocast casts each product's inputs: equal to bf16 rounding). Builds data/smoke as
# `make smoke-data` does when it is missing (with $PYTHON, default python: no venv needed).
#   bash bench/gpu_fsdp_check.sh [OUT_DIR]     # the runs and a summary go to OUT_DIR (default $OUT or /tmp)
set -euo pipefail
out=${1:-${OUT:-/tmp}}/fsdp
rm -rf "$out" && mkdir -p "$out"
py=${PYTHON:-python}
lm="$py -m lmproject.lit.commands"
if [ ! -f data/smoke/valid.npy ]; then
  mkdir -p data/smoke
  $py -m lmproject.tools.stories --out data/smoke/train.txt --size-mb 2 --seed 0
  $py -m lmproject.tools.stories --out data/smoke/valid.txt --size-mb 0.2 --seed 1
  $py -m lmproject.tokenizer train data/smoke/train.txt --vocab-size 512 --special-token '<|endoftext|>' \
    --out data/smoke/tokenizer
  for split in train valid; do
    $py -m lmproject.tokenizer encode --tokenizer data/smoke/tokenizer data/smoke/$split.txt data/smoke/$split.npy
  done
fi
# shellcheck disable=SC2206  # MODEL_ARGS: options split on spaces
common=(--config configs/smoke.yaml --train_tokens null --trainer.enable_progress_bar false ${MODEL_ARGS:-})
gpu=(--trainer.accelerator gpu --trainer.devices 1 --trainer.precision bf16-mixed)
first=(--trainer.max_steps 30 --trainer.log_every_n_steps 1)
$lm fit "${common[@]}" "${gpu[@]}" "${first[@]}" --trainer.default_root_dir "$out/single"
for strategy in ${STRATEGIES:-fsdp fsdp_sharded}; do
  run=$out/$strategy
  $lm fit "${common[@]}" "${gpu[@]}" "${first[@]}" --trainer.strategy $strategy --trainer.default_root_dir "$run"
  $py -c "import csv
def losses(run): return {r['step']: float(r['train/loss']) for r in csv.DictReader(open(f'{run}/logs/version_0/metrics.csv')) if r['train/loss']}
a, b = losses('$run'), losses('$out/single')
print('$strategy: first', len(a), 'steps: max |train/loss - one device without FSDP| =', max(abs(a[s] - b[s]) for s in a))" \
    | tee "$run/first_steps.txt"
  $lm fit "${common[@]}" "${gpu[@]}" --trainer.strategy $strategy --trainer.max_steps 40 \
    --trainer.default_root_dir "$run" --ckpt_path last
  $lm validate "${common[@]}" "${gpu[@]}" --trainer.strategy $strategy --trainer.default_root_dir "$run" \
    --ckpt_path last 2>&1 | tee "$run/validate_fsdp.txt"
  $lm validate "${common[@]}" --trainer.accelerator cpu --trainer.default_root_dir "$run" --ckpt_path last \
    2>&1 | tee "$run/validate_cpu.txt"
  $lm predict "${common[@]}" --trainer.accelerator cpu --trainer.default_root_dir "$run" --ckpt_path last \
    --prompt "Once upon a time" --max_new_tokens 20 --stream false --output "$run/samples.jsonl"
  for device in cpu gpu; do  # greedy on the GPU (a replayed CUDA-graph decode step) = greedy on the CPU
    $lm predict "${common[@]}" --trainer.accelerator $device --trainer.default_root_dir "$run" --ckpt_path last \
      --prompt "Once upon a time" --max_new_tokens 40 --temperature 0 --stream false --output "$run/greedy_$device.jsonl"
  done
  $py -c "import json; a, b = (json.load(open(f'$run/greedy_{d}.jsonl'))['completion'] for d in ('cpu', 'gpu'));
print('greedy completion on the GPU equals the CPU one:', a == b)" | tee "$run/greedy.txt"
  $lm export "${common[@]}" --trainer.default_root_dir "$run" --ckpt_path last --out "$run/hf"
  ls -la "$run/hf" > "$run/export.txt"
  ls -la "$run/checkpoints" > "$run/checkpoints.txt"
done
grep -h "val/loss\|greedy\|first" "$out"/*/validate_*.txt "$out"/*/greedy.txt "$out"/*/first_steps.txt \
  | tee "$out/summary.txt"
