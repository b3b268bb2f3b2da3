#!/usr/bin/env bash
# Every figure of BENCHMARKS.md, in order (about 45 minutes on a 2-core machine). Outputs in benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin
R=benchmarks/results
mkdir -p $R
t() { local name=$1; shift; /usr/bin/time -f "$name wall %e s" -a -o $R/times.txt "$@"; }
t compare-zer $B/cmcd-edge -q compare --data builtin:mfeat --source fac --target zer --seeds 3 --out $R/compare-zer --force
t compare-fou $B/cmcd-edge -q compare --data builtin:mfeat --source fac --target fou --seeds 3 --out $R/compare-fou --force
t compare-mor $B/cmcd-edge -q compare --data builtin:mfeat --source fac --target mor --methods cmcd,kd,supervised --seeds 3 --out $R/compare-mor --force
t latency-suite $B/python benchmarks/latency_suite.py --out $R/latency_suite.json > $R/latency_suite.txt
t select-zer $B/cmcd-edge -q select-teacher --data builtin:mfeat --target zer --candidates fac,pix,kar,fou,mor --seeds 3 --out $R/select-zer.json > $R/select-zer.txt
for v in pix kar fou mor; do
  t gain-$v $B/cmcd-edge -q compare --data builtin:mfeat --source $v --target zer --methods cmcd,supervised --seeds 3 --out $R/gain-zer-$v --force --no-upper-bound
done
t mi-synthetic $B/python benchmarks/mi_synthetic.py --out $R/mi_synthetic.json > $R/mi_synthetic.txt
