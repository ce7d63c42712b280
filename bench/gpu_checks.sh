#!/usr/bin/env bash
# Every GPU check the open issues ask for, in one call on a CUDA machine, each step bounded in time so the
# whole script ends within GPU_CHECKS_SECONDS (default 540) with whatever it measured:
#   1. the CUDA tests of tests/test_generate.py (cached greedy = CPU, seeded sampling, CUDA-graph replay);
#   2. generation speed: bf16, batch 1 with a CUDA-graph decode step, and batch 16 (bench_generate.py);
#   3. FSDP end to end on the smoke config (bench/gpu_fsdp_check.sh);
#   4. fit throughput, MFU and peak memory for the variants in $FIT_VARIANTS, with a profile (bench_gpu.py);
#   5. recipe (only when STEPS names it): the baseline, Muon alone and the modern recipe
#      (configs/recipes/modern.yaml), all compiled, in one bench_gpu.py run, Muon profiled;
#   6. muon (only when STEPS names it; issue 23, about 8 minutes: STEPS=muon alone): the TinyStories config,
#      bf16, compiled, batch 128, the baseline against the modern recipe (bench_gpu.py's "x first": target
#      >= 0.9; "opt %": the Muon update's share of the step, target <= 10%), then FSDP with Muon on one GPU
#      (gpu_fsdp_check.sh with MODEL_ARGS="--model.optimizer muon": its first steps against one device's,
#      train, resume, validate, sample, export; MUON_STRATEGIES, default fsdp, for fsdp_sharded too).
# STEPS="cuda_tests generate fsdp fit_variants" (the default) chooses steps; STRATEGIES is passed on to
# gpu_fsdp_check.sh (e.g. STEPS="recipe fsdp" STRATEGIES=fsdp_sharded for a second, shorter call).
# Runs from the checkout (PYTHONPATH) with the machine's python3, torch and Lightning (jsonargparse must be
# importable). OUT gets summary.txt (each step's return code and the tail of its log) and logs.tar.gz (full
# logs, bench tables and profiles, the FSDP runs without their checkpoints).
#   OUT=/tmp/gpu bash bench/gpu_checks.sh
set -u
out=${OUT:-/tmp/gpu_checks}
work=/tmp/gpu_work
rm -rf "$work" && mkdir -p "$out" "$work/logs"
summary=$out/summary.txt
total=${GPU_CHECKS_SECONDS:-540}
export PYTHONUNBUFFERED=1 PYTHON=python3 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

step() {  # step NAME SECONDS COMMAND...: at most SECONDS (less if the total is nearly spent), logged
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  ((limit > total - SECONDS - 15)) && limit=$((total - SECONDS - 15))
  if ((limit < 20)); then
    echo "=== $name: not run (the time is spent)" | tee -a "$summary"
    return
  fi
  echo "=== $name (limit ${limit}s, $(date +%T))" | tee -a "$summary"
  timeout -k 10 "$limit" "$@" >"$work/logs/$name.log" 2>&1
  rc=$?
  echo "--- $name: rc=$rc after $((SECONDS - start))s" | tee -a "$summary"
  tail -n 40 "$work/logs/$name.log" >>"$summary"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$summary"
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" \
  | tee -a "$summary"
python3 setup.py -q build_ext --inplace >"$work/logs/build.log" 2>&1 \
  || echo "the C merge loop did not build: the tokenizer runs its Python loop" | tee -a "$summary"

wants() { [[ " ${STEPS:-cuda_tests generate fsdp fit_variants} " == *" $1 "* ]]; }
wants cuda_tests && step cuda_tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_generate.py -k cuda
wants generate && step generate 100 python3 bench/bench_generate.py --device cuda --dtype bfloat16 --cuda-graph --repeats 2
wants fsdp && step fsdp 150 bash bench/gpu_fsdp_check.sh "$work"
if wants recipe; then
  step recipe 220 python3 bench/bench_gpu.py --variants compiled,muon,modern --profile muon --budget 190 \
    --out "$work/recipe"
fi
if wants muon; then
  step muon_speed 280 python3 bench/bench_gpu.py --variants compiled,modern --profile modern --budget 250 \
    --out "$work/muon"
  step muon_fsdp 200 env STRATEGIES="${MUON_STRATEGIES:-fsdp}" MODEL_ARGS="--model.optimizer muon" \
    bash bench/gpu_fsdp_check.sh "$work/muon"
fi
if wants fit_variants; then
  remaining=$((total - SECONDS - 40))
  step fit_variants "$remaining" python3 bench/bench_gpu.py --variants "${FIT_VARIANTS:-compiled,cudagraphs,b512,chunked}" \
    --profile compiled --budget $((remaining - 30)) --out "$work/fit"
fi
tar -czf "$out/logs.tar.gz" --exclude=checkpoints --exclude="*.ckpt" -C "$work" . 2>/dev/null
echo "done at $(date +%T), ${SECONDS}s" | tee -a "$summary"
