#!/usr/bin/env bash
# What the CPU build machine cannot measure, in one run on a CUDA machine (BENCHMARKS.md, "GPU, TensorRT, Jetson"):
#   1. distill fac -> zer on builtin:mfeat on the GPU (teacher too, AMP on), then export --int8 of that run; where
#      this machine has them, onnxruntime's CUDA provider (bench) and TensorRT (export, build-engine, bench, the
#      tests marked tensorrt);
#   2. one distill under torchrun on the GPU (NCCL, one rank);
#   3. benchmarks/train_speed.py --device cuda (every method's distill samples/s);
#   4. the 20,000-row image -> sequence set of benchmarks/scale_synthetic.py, distilled on the GPU;
#   5. the acceptance compare (fac -> zer, 8 methods x 3 seeds) on the GPU, 4 runs at a time (--jobs 4);
#      COMPARE_TARGETS='zer fou mor' for more targets.
# Each step has its own time limit and writes into $OUT (default /tmp/gpu_check); a failed step does not stop the
# next. Run with a python3 that has torch (CUDA) and the [train] extras, cmcd-edge installed editable (the tests
# marked tensorrt import it from the repository):
#   python3 -m pip install --no-deps --no-build-isolation -e . && bash benchmarks/gpu_check.sh
# DEV=cpu QUICK=1 bash benchmarks/gpu_check.sh   tries the script itself on a CPU machine (few epochs);
# ONLY='env|scale' runs only the steps whose names match (env, distill_zer, export_zer, bench_cuda, export_trt,
# build_engine, bench_trt, pytest_trt, torchrun_zer, train_speed,
# scale_data, distill_scale, compare_zer).
set -u
OUT=${OUT:-/tmp/gpu_check}
DEV=${DEV:-cuda}
REPO=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d)
mkdir -p "$OUT"
cd "$W"  # not the repository root: its cmcd_edge/ folder would hide an installed package's subpackages
export PYTHONUNBUFFERED=1
LOG=$OUT/gpu_check.log
CLI=(python3 -m cmcd_edge)
if [ "${QUICK:-0}" = 1 ]; then
  echo '{"teacher_epochs": 2, "finetune_epochs": 2}' > "$W/cfg.json"
  FEW=(--epochs 2 --config "$W/cfg.json"); REPS=1; SCALE_N=2000
else
  echo '{"teacher_epochs": 3, "finetune_epochs": 2}' > "$W/cfg.json"
  FEW=(); REPS=${REPS:-1}; SCALE_N=20000
fi

step() {  # step NAME SECONDS CMD...: run CMD under a time limit, log its wall time and exit status
  local name=$1 limit=$2; shift 2
  [[ $name =~ ${ONLY:-.} ]] || return 0
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v --line-buffered 'epoch [0-9]*/' | tee -a "$LOG"
  echo "=== $name: rc=${PIPESTATUS[0]} wall=$((SECONDS - t0))s" | tee -a "$LOG"
}

skip() {  # skip NAMES WHY: say so in the log, for the steps ONLY selects
  local name
  for name in $1; do [[ $name =~ ${ONLY:-.} ]] && echo "=== $name: skipped, $2" | tee -a "$LOG"; done
  return 0
}

step env 60 bash -c 'nvidia-smi -L; python3 -c "import torch, onnxruntime as ort, platform
print(\"torch\", torch.__version__, \"cuda\", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"-\",
      \"bf16\", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
print(\"onnxruntime\", ort.__version__, ort.get_available_providers(), \"cpu\", platform.processor(), \"threads\", torch.get_num_threads())"'

step distill_zer 150 "${CLI[@]}" distill --data builtin:mfeat --source fac --target zer --device "$DEV" \
  "${FEW[@]}" --out "$W/zer"
cp "$W/zer/metrics.json" "$OUT/zer_metrics.json" 2>/dev/null
step export_zer 90 "${CLI[@]}" export "$W/zer" --int8 --out "$W/zer_bundle"
cp "$W/zer_bundle/manifest.json" "$OUT/zer_manifest.json" 2>/dev/null

# onnxruntime's CUDA provider and TensorRT, where this machine has them (onnxruntime-gpu; the tensorrt package)
if python3 -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null
then
  step bench_cuda 120 "${CLI[@]}" bench "$W/zer_bundle" --backend cuda --batch 1,8
else
  skip bench_cuda "onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu)"
fi
if python3 -c "import tensorrt" 2>/dev/null; then
  step export_trt 120 "${CLI[@]}" export "$W/zer" --int8 --fp16 --target tensorrt --out "$W/zer_trt"
  step build_engine 300 "${CLI[@]}" build-engine "$W/zer_trt" --precision int8
  step bench_trt 120 "${CLI[@]}" bench "$W/zer_trt" --backend tensorrt --batch 1,8
  step pytest_trt 300 python3 -m pytest -q -m tensorrt "$REPO/tests"
else
  skip "export_trt build_engine bench_trt pytest_trt" "no tensorrt package here"
fi

step torchrun_zer 120 python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m cmcd_edge distill \
  --data builtin:mfeat --source fac --target zer --device "$DEV" --epochs 5 --config "$W/cfg.json" --out "$W/ddp"
cp "$W/ddp/metrics.json" "$OUT/ddp_metrics.json" 2>/dev/null

step train_speed 240 python3 "$REPO/benchmarks/train_speed.py" --device "$DEV" --reps "$REPS" --out "$OUT/train_speed_$DEV.json"

step scale_data 60 bash -c "python3 $REPO/benchmarks/scale_synthetic.py $W/arrays $SCALE_N && ${CLI[*]} data from-arrays $W/ds \
  --view cam=$W/arrays/cam.npy:image --view imu=$W/arrays/imu.npy:sequence --labels $W/arrays/labels.npy"
step distill_scale 300 "${CLI[@]}" distill --data "$W/ds" --source cam --target imu --device "$DEV" "${FEW[@]}" \
  --out "$W/scale"
cp "$W/scale/metrics.json" "$OUT/scale_metrics.json" 2>/dev/null

for t in ${COMPARE_TARGETS:-zer}; do
  step "compare_$t" 300 "${CLI[@]}" -q compare --data builtin:mfeat --source fac --target "$t" --seeds "${SEEDS:-3}" \
    --jobs 4 --device "$DEV" "${FEW[@]}" --out "$W/cmp_$t"
  cp "$W/cmp_$t/results.json" "$OUT/compare_${t}_results.json" 2>/dev/null
  cp "$W/cmp_$t/results.md" "$OUT/compare_${t}_results.md" 2>/dev/null
done
rm -rf "$W"
