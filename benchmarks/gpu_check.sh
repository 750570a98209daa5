#!/usr/bin/env bash
# Every GPU figure the project owes, in one run (< 8 minutes on a 16-core single-GPU node), printed as one table:
#   1. model actor stages (vessels: vessel_unet; pseudo labels: lesion_unet) at 512 and 1024 px vs the bare
#      forward of the same model (benchmarks/bench_model_actor.py), with the GPU busy fraction (nvidia-smi
#      utilization.gpu sampled every second during the step);
#   2. GraphFusion training throughput vs its backbone alone, and Ray Train's input busy fraction
#      (benchmarks/bench_fusion_throughput.py --ray);
#   3. an 8-trial ASHA campaign with 4 trials sharing the GPU (0.25 GPU per trial worker), killed and resumed
#      (benchmarks/bench_tune_campaign.py);
#   4. preprocess job efficiency at 16 cores (benchmarks/bench_preprocess_job.py);
#   5. `dr-ray label` end to end with both models on the GPU at 512 and 1024 px vs the bare forward of the same
#      two models (benchmarks/bench_label_gpu.py), with the GPU busy fraction;
#   6. JPEG decode for preprocess.decode_device: CPU libjpeg vs the batched nvJPEG decode (+ GPU resize) of the
#      EyePACS sample repeated to 64 images, images/s and CPU-ms per image each (benchmarks/bench_gpu_decode.py;
#      synthetic 3888x2592 frames when ../shared is absent, as on the GPU machine; ~1 minute).
#
# On the GPU machine (torch, timm, torch-geometric, opencv, scikit-image, pyarrow installed; no Ray):
#   bash ../shared/tools/ray-device-bundle.sh      # here, once: builds .whl/ (Ray without its jars + a few wheels)
#   then run with carry [".whl"]:  bash benchmarks/gpu_check.sh
# Ray is installed from .whl/ into /tmp/site and dr-ray with --no-deps (no second torch is ever pulled).
# CPU dry run (every step at tiny size, < 2 minutes, the checkout's .venv):  bash benchmarks/gpu_check.sh --dry-run
# (or GPU_CHECK_CPU=1). Results: one JSON per step and table.md under $OUT (or outputs/gpu_check).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=${GPU_CHECK_CPU:-0}
[[ "${1:-}" == "--dry-run" ]] && DRY=1
RES=${OUT:-outputs/gpu_check}
mkdir -p "$RES"

if [[ "$DRY" == 1 ]]; then
  PY=${PYTHON:-.venv/bin/python}
else
  PY=${PYTHON:-python3}
  if ! "$PY" -c "import ray" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "gpu_check: no Ray and no .whl/ (run ray-device-bundle.sh, carry .whl)" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  "$PY" -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/site .   # dr-ray, no deps
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" \
    || { echo "gpu_check: torch sees no GPU (use --dry-run on a CPU machine)" >&2; exit 2; }
fi
export RAY_DATA_DISABLE_PROGRESS_BARS=1
CPUS=$(nproc)

# util <name> <command...>: run a step, sample GPU utilisation meanwhile, keep its log
util() {
  local name=$1; shift
  local smi=""
  if command -v nvidia-smi >/dev/null && [[ "$DRY" != 1 ]]; then
    nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -l 1 > "$RES/$name.util" &
    smi=$!
  fi
  local t0=$SECONDS rc=0
  "$@" > "$RES/$name.log" 2>&1 || rc=$?
  [[ -n "$smi" ]] && kill "$smi" 2>/dev/null || true
  echo "{\"step\": \"$name\", \"rc\": $rc, \"wall_s\": $((SECONDS - t0))}" > "$RES/$name.step.json"
  [[ $rc == 0 ]] || { echo "gpu_check: step $name failed (rc $rc), log tail:" >&2; tail -20 "$RES/$name.log" >&2; }
}

if [[ "$DRY" == 1 ]]; then
  A=(--rows 16 --batch 4 --actor-cpus 1 --cpus 2 --encoder mobilenetv3_small_100)
  for s in 64 96; do
    util "vessels_$s" "$PY" benchmarks/bench_model_actor.py --stage vessels --size $s "${A[@]}" --json "$RES/vessels_$s.json"
    util "pseudo_labels_$s" "$PY" benchmarks/bench_model_actor.py --stage pseudo_labels --size $s "${A[@]}" --json "$RES/pseudo_labels_$s.json"
  done
  util fusion "$PY" benchmarks/bench_fusion_throughput.py --size 64 --batch 4 --steps 2 --nodes 20 --json "$RES/fusion.json"
  util tune "$PY" benchmarks/bench_tune_campaign.py --trials 2 --concurrent 1 --epochs 1 --kill-after 1 --cpus 2 --timeout 300 --json "$RES/tune.json"
  util preprocess "$PY" benchmarks/bench_preprocess_job.py --rows 8 --small 4 --cpus 2 --json "$RES/preprocess.json"
  util label_64 "$PY" benchmarks/bench_label_gpu.py --tiny --rows 16 --size 64 --width 384 --height 256 --batch 4 --actor-cpus 1 --cpus 2 --json "$RES/label_64.json"
  util gpu_decode "$PY" benchmarks/bench_gpu_decode.py --device cpu --images 12 --batches 6 --repeats 1 --size 128 --synthetic-size 768x512 --json "$RES/gpu_decode.json"
else
  for s in 512 1024; do
    rows=$(( s == 512 ? 3000 : 1000 ))
    util "vessels_$s" "$PY" benchmarks/bench_model_actor.py --stage vessels --size $s --rows $rows --batch 32 --actor-cpus 8 --cpus "$CPUS" --json "$RES/vessels_$s.json"
    util "pseudo_labels_$s" "$PY" benchmarks/bench_model_actor.py --stage pseudo_labels --size $s --rows $rows --batch 32 --actor-cpus 8 --cpus "$CPUS" --json "$RES/pseudo_labels_$s.json"
  done
  util fusion "$PY" benchmarks/bench_fusion_throughput.py --size 512 --batch 32 --steps 30 --ray --rows 2048 --json "$RES/fusion.json"
  util tune "$PY" benchmarks/bench_tune_campaign.py --trials 8 --concurrent 4 --epochs 2 --kill-after 3 --gpus-per-worker 0.25 --cpus "$CPUS" --timeout 240 --json "$RES/tune.json"
  util preprocess "$PY" benchmarks/bench_preprocess_job.py --rows 2000 --small 200 --cpus "$CPUS" --json "$RES/preprocess.json"
  util label_512 "$PY" benchmarks/bench_label_gpu.py --size 512 --rows 2000 --batch 32 --actor-cpus 4 --cpus "$CPUS" --json "$RES/label_512.json"
  util label_1024 "$PY" benchmarks/bench_label_gpu.py --size 1024 --rows 600 --batch 16 --actor-cpus 4 --cpus "$CPUS" --json "$RES/label_1024.json"
  util gpu_decode "$PY" benchmarks/bench_gpu_decode.py --device cuda --images 64 --batches 8,64 --repeats 3 --json "$RES/gpu_decode.json"
fi

# one table: every scalar figure of every step's JSON, plus its wall time, exit status and GPU busy fraction
"$PY" - "$RES" "$DRY" <<'PY'
import json, sys
from pathlib import Path

res, dry = Path(sys.argv[1]), sys.argv[2] == "1"
lines = [f"# gpu_check{' (CPU dry run: tiny sizes, numbers mean nothing)' if dry else ''}", "",
         "| step | figure | value |", "|---|---|---|"]
for step in sorted(res.glob("*.step.json")):
    s = json.loads(step.read_text())
    name = s["step"]
    u = res / f"{name}.util"
    busy = None
    if u.exists():
        v = [float(x) for x in u.read_text().split() if x.strip().replace(".", "", 1).isdigit()]
        busy = sum(x > 0 for x in v) / len(v) if v else None
        lines.append(f"| {name} | GPU utilisation mean % / busy fraction | "
                     f"{(sum(v) / len(v)) if v else float('nan'):.0f} / {busy if busy is not None else float('nan'):.2f} |")
    lines.append(f"| {name} | exit status, wall s | {s['rc']}, {s['wall_s']} |")
    out = res / f"{name}.json"
    if out.exists():
        def flat(d, pre=""):
            for k, v in d.items():
                if isinstance(v, dict):
                    yield from flat(v, f"{pre}{k}.")
                elif isinstance(v, (int, float)) and not isinstance(v, bool):
                    yield f"{pre}{k}", v
                elif isinstance(v, (str, bool)) and k in ("device", "model", "encoder", "stage"):
                    yield f"{pre}{k}", v
        for k, v in flat(json.loads(out.read_text())):
            lines.append(f"| {name} | {k} | {v:.4g} |" if isinstance(v, float) else f"| {name} | {k} | {v} |")
text = "\n".join(lines)
(res / "table.md").write_text(text + "\n")
print(text)
bad = [json.loads(p.read_text())["step"] for p in res.glob("*.step.json") if json.loads(p.read_text())["rc"]]
if bad:
    print(f"\nFAILED steps: {bad} (logs under {res})", file=sys.stderr)
    sys.exit(1)
PY
