#!/usr/bin/env bash
# Every figure of BENCHMARKS.md, in order (about 100 minutes on a 2-core machine). Outputs in benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin
R=benchmarks/results
mkdir -p $R
t() { local name=$1; shift; /usr/bin/time -f "$name wall %e s" -a -o $R/times.txt "$@"; }
# issue 3: compare on three targets, then the selection and recipe checks on val (reuse the compare teachers)
for tgt in zer fou mor; do
  t compare-$tgt $B/cmcd-edge -q compare --data builtin:mfeat --source fac --target $tgt --seeds 3 --out $R/compare-$tgt --force \
    --teacher-cache /tmp/cmcd-teachers  # fou and mor take zer's seed teachers (the same results, session 23)
done
# session 25: compare --extend grows a copy of compare-zer to 4 seeds, against a fresh 4-seed compare
$B/python benchmarks/compare_extend.py --base $R/compare-zer --out $R/compare_extend.json > $R/compare_extend.txt
# session 25: compare --jobs 2 against --jobs 1, the same compare, interleaved
$B/python benchmarks/compare_jobs.py --target zer --rounds 2 --out $R/compare_jobs.json > $R/compare_jobs.txt
# session 26: CRD's dense scores against the gathered rows (the old code), the loss and crd's compare, interleaved
$B/python benchmarks/crd_speed.py --targets zer,fou --rounds 2 --out $R/crd_speed.json > $R/crd_speed.txt
$B/python benchmarks/crd_speed.py --targets zer --rounds 2 --loss-rounds 1 --methods cmcd,cmd,cmc,kd,fitnet,rkd,crd,supervised \
  --out $R/crd_speed_compare.json > $R/crd_speed_compare.txt
# session 19's control: the same protocol with a teacher on a pure-noise view (what the train labels alone pass on)
rm -rf /tmp/mfeat-noise
$B/python benchmarks/noise_source.py /tmp/mfeat-noise
for tgt in zer fou; do
  t noise-source-$tgt $B/cmcd-edge -q compare --data /tmp/mfeat-noise --source noise --target $tgt --methods cmcd,kd,fitnet,supervised --seeds 3 --out $R/noise-source-$tgt --force
done
t selection-study $B/python benchmarks/selection_study.py --out $R/selection_study.json > $R/selection_study.txt
t recipe-sweep $B/python benchmarks/recipe_sweep.py --out $R/recipe_sweep.json > $R/recipe_sweep.txt
t recipe-sweep-2 $B/python benchmarks/recipe_sweep.py --set weights-temps --reuse $R/recipe_sweep.json \
  --out $R/recipe_sweep_weights_temps.json > $R/recipe_sweep_weights_temps.txt
for set in projector issue-knobs; do
  t recipe-sweep-$set $B/python benchmarks/recipe_sweep.py --set $set --reuse $R/recipe_sweep.json \
    --out $R/recipe_sweep_${set/-/_}.json > $R/recipe_sweep_${set/-/_}.txt
done
# ten more seeds (3-12) of the acceptance's methods, the confirmation of the FitNet term (session 6, on val of these
# seeds; its candidates are explicit recipes, so it reproduces whatever the default), and every seed triple scored
for tgt in fou zer; do
  t compare-$tgt-seeds3-12 $B/cmcd-edge -q compare --data builtin:mfeat --source fac --target $tgt \
    --methods cmcd,kd,fitnet,rkd,crd,supervised --seed 3 --seeds 10 --out $R/compare-$tgt-seeds3-12 --force --no-upper-bound
done
t recipe-confirm $B/python benchmarks/recipe_sweep.py --set confirm --first-seed 3 --seeds 10 \
  --teachers 'compare-{t}-seeds3-12' --out $R/recipe_confirm.json > $R/recipe_confirm.txt
# session 20: a label-free teacher (whitened PCA of fac, fitted on each seed's train rows) against the built-in one
for tgt in zer fou; do
  for s in 0 1 2; do
    PYTHONPATH=benchmarks PCA_TEACHER_SEED=$s t labelfree-$tgt-s$s $B/cmcd-edge -q compare --data builtin:mfeat --source fac \
      --target $tgt --teacher pca_teacher:factory --methods cmd,cmc,fitnet,supervised --seed $s --seeds 1 --no-upper-bound \
      --out $R/labelfree-$tgt-s$s --force > /dev/null
  done
  PYTHONPATH=benchmarks $B/python benchmarks/pca_teacher.py --label-free "$R/labelfree-$tgt-s{seed}" --built-in $R/compare-$tgt
  echo
done > $R/labelfree.txt
# session 20: cmcd against the 100%-labels student on the same ten extra seeds
for tgt in zer fou; do
  t ceiling-$tgt-seeds3-12 $B/cmcd-edge -q compare --data builtin:mfeat --source fac --target $tgt \
    --methods cmcd,supervised --seed 3 --seeds 10 --out $R/ceiling-$tgt-seeds3-12 --force
done
$B/python benchmarks/seed_study.py --out $R/seed_study.json > $R/seed_study.txt
# a diagnostic: the same compare with a 12x wider student (benchmarks/width512.json), not an acceptance figure
for tgt in zer fou; do
  t compare-$tgt-width512 $B/cmcd-edge -q compare --data builtin:mfeat --source fac --target $tgt \
    --methods cmcd,kd,fitnet,supervised --seeds 3 --config benchmarks/width512.json --out $R/compare-$tgt-width512 --force
done
# distill training speed per method on the CPU (the figure a CUDA run stands beside)
t train-speed $B/python benchmarks/train_speed.py --device cpu --out $R/train_speed.json > $R/train_speed.txt
# issue 4: ranking, per-candidate CMCD gains, Spearman, MI estimators on synthetic Gaussians
t select-zer $B/cmcd-edge -q select-teacher --data builtin:mfeat --target zer --candidates fac,pix,kar,fou,mor --seeds 3 --out $R/select-zer.json > $R/select-zer.txt
for v in pix kar fou mor; do
  t gain-$v $B/cmcd-edge -q compare --data builtin:mfeat --source $v --target zer --methods cmcd,supervised --seeds 3 --out $R/gain-zer-$v --force --no-upper-bound
done
$B/python benchmarks/select_vs_gain.py $R/select-zer.json fac=$R/compare-zer pix=$R/gain-zer-pix kar=$R/gain-zer-kar \
  fou=$R/gain-zer-fou mor=$R/gain-zer-mor > $R/select_vs_gain.md
t mi-synthetic $B/python benchmarks/mi_synthetic.py --reps 40 --out $R/mi_synthetic.json > $R/mi_synthetic.txt
t infonce-speed $B/python benchmarks/infonce_speed.py --rounds 8 --out $R/infonce_speed.json > $R/infonce_speed.txt
# session 19: the I(S;Y) probe against the truth, then what distilling from each source of its 600-row set gains
rm -rf /tmp/cmcd-small
t label-probe $B/python benchmarks/label_probe.py --reps 5 --data-out /tmp/cmcd-small --out $R/label_probe.json > $R/label_probe.txt
for v in good weak; do
  t gain-small-$v $B/cmcd-edge -q compare --data /tmp/cmcd-small --source $v --target tgt --methods cmcd,supervised --seeds 3 --no-upper-bound --out $R/gain-small-$v --force
done
t gain-small-noise $B/cmcd-edge -q compare --data /tmp/cmcd-small --source noise --target tgt --methods cmcd,kd,supervised --seeds 3 --out $R/gain-small-noise --force
t select-small $B/cmcd-edge -q select-teacher --data /tmp/cmcd-small --target tgt --seeds 3 --out $R/select-small.json > $R/select-small.txt
PYTHONPATH=benchmarks t gain-small-random $B/cmcd-edge -q compare --data /tmp/cmcd-small --source noise --target tgt --teacher random_teacher:factory --methods cmcd,kd,supervised --seeds 3 --no-upper-bound --out $R/gain-small-random --force
# issue 5: export of the fac->zer CMCD student (seed 0), per-channel (default) and per-tensor weights
for g in per-channel per-tensor; do
  t export-$g $B/cmcd-edge -q export $R/compare-zer/runs/cmcd-s0 --out $R/bundle-zer-$g --int8 --fp16 --$g --force > $R/export-$g.md
done
# session 20: INT8 full-range vs 7-bit weights; on an x86 CPU without VNNI emulated for the MLP students (mfeat's
# vector targets), measured here only for a cnn2d (pix) and a cnn1d (the 600-row set's sequence target) student
rm -rf /tmp/sat && mkdir -p /tmp/sat
for tgt in zer fou kar mor pix; do
  $B/cmcd-edge -q distill --data builtin:mfeat --source fac --target $tgt --out /tmp/sat/run-$tgt > /dev/null
done
$B/cmcd-edge -q distill --data /tmp/cmcd-small --source good --target tgt --out /tmp/sat/run-seq > /dev/null
for tgt in zer fou kar mor pix seq; do
  for p in vnni avx2; do $B/cmcd-edge -q export /tmp/sat/run-$tgt --out /tmp/sat/$tgt-$p --target cpu-$p > /dev/null; done
done
$B/python benchmarks/saturation.py /tmp/sat/{zer,fou,kar,mor,pix,seq}-{vnni,avx2} --out $R/saturation.json > $R/saturation.txt
# session 21: a device app's first request after Predictor.load, with and without the warm-up (fresh processes)
$B/python benchmarks/first_call.py /tmp/sat/{zer,pix,seq}-avx2 --out $R/first_call.json > $R/first_call.txt
# issue 6: latency suite (INT8 vs FP32 vs torch) and the Predictor's overhead
t latency-suite $B/python benchmarks/latency_suite.py --out $R/latency_suite.json > $R/latency_suite.txt
$B/cmcd-edge -q bench $R/bundle-zer-per-channel --batch 1,8 --out $R/bench-zer.json > $R/bench-zer.txt
# session 10: a source view larger than memory (40k x 3x64x64 camera rows; preloaded vs read per batch) and the
# inference batch per network on the CPU
t stream-memory $B/python benchmarks/stream_memory.py --work /tmp/cmcd-stream --out $R/stream_memory.json > $R/stream_memory.txt
t eval-batch-speed $B/python benchmarks/eval_batch_speed.py --out $R/eval_batch_speed.json > $R/eval_batch_speed.txt
# session 11: the built-in teacher under torchrun (DDP) against one process, for this code and for the code before
# (a worktree of 6896904)
test -d /tmp/cmcd-base-6896904 || git worktree add -f /tmp/cmcd-base-6896904 6896904
t ddp-teacher $B/python benchmarks/ddp_teacher.py --baseline /tmp/cmcd-base-6896904 --out $R/ddp_teacher.json \
  > $R/ddp_teacher.txt
# session 18: run-to-run determinism with and without the warm-up of MKL's vector math (fresh processes)
t determinism $B/python benchmarks/determinism.py --procs 40 --runs 12 --out $R/determinism.json > $R/determinism.txt
# session 22: compare with a loaded teacher, against the commit before (a worktree of f92aa9e)
test -d /tmp/base22 || git worktree add -f /tmp/base22 f92aa9e
t loaded-teacher $B/python benchmarks/loaded_teacher.py --baseline /tmp/base22 --out $R/loaded_teacher.json > $R/loaded_teacher.txt
# session 23: a second target's distill with a warm --teacher-cache, against none
t teacher-cache $B/python benchmarks/teacher_cache.py --out $R/teacher_cache.json > $R/teacher_cache.txt
# session 24: two identical bundles' p50 ratio, from two bench runs against one interleaved run
$B/cmcd-edge -q demo --out /tmp/cmcd-demo > /dev/null
t bench-pairs $B/python benchmarks/bench_pairs.py /tmp/cmcd-demo/bundle --rounds 8 --out $R/bench_pairs.json > $R/bench_pairs.txt
# session 24: predict over 200,000 samples, each output, against the code before (a worktree of 00068a2)
test -d /tmp/base24 || git worktree add -f /tmp/base24 00068a2
t predict-out $B/python benchmarks/predict_out.py /tmp/cmcd-demo/bundle --rows 200000 --baseline /tmp/base24 \
  --out $R/predict_out.json > $R/predict_out.txt
# session 24: the machine's speed over time (0.5 s blocks of one call in one process)
$B/python benchmarks/speed_levels.py /tmp/cmcd-demo/bundle --blocks 30 --runs 4 > $R/speed_levels.txt
