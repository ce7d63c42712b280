#!/usr/bin/env bash
# Times what a new user runs: a fresh clone, then `make demo` (venv + install, then the whole pipeline).
# Prints the install time, the pipeline time and each stage's seconds (from demo/timings.json), with the
# core count and load averages, since a busy machine slows every stage.
#   bash bench/time_demo.sh [WORKDIR]      (default: a new temp folder; the clone stays there)
# Set PYTHON to choose the interpreter that creates the venv (default python3), as for make.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
git clone -q "$repo" "$work/lmproject"
cd "$work/lmproject"
echo "machine: $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s.%N)
make install >install.log 2>&1 || { tail -20 install.log; exit 1; }
installed=$(date +%s.%N)
make demo >demo.log 2>&1 || { tail -40 demo.log; exit 1; }
done_at=$(date +%s.%N)
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$start" "$installed" "$done_at" <<'PY'
import json, sys
start, installed, done = map(float, sys.argv[1:])
stages = json.load(open("demo/timings.json"))
print(f"make install: {installed - start:.0f} s")
print(f"make demo (pipeline, with python start-up): {done - installed:.0f} s")
print("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()))
print(f"total: {done - start:.0f} s")
PY
echo "sample: $(head -c 300 demo/sample.txt)"
echo "clone and logs: $work/lmproject (install.log, demo.log)"
