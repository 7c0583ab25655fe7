"""A prior folder with a training checkpoint's raw (not EMA) UNet weights, to see what the latest steps learned
before the EMA (half-life ~350 steps at 0.998) catches up.

python raw_prior.py <prior folder written by train_tiny_prior.py> <work>/ckpt.pt <new folder>"""
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file

src, ckpt, dst = sys.argv[1], sys.argv[2], sys.argv[3]
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst)
state = torch.load(ckpt, map_location="cpu", weights_only=True)  # tensors and plain values only
ref = load_file(f"{src}/unet/diffusion_pytorch_model.safetensors")
weights = {k: v.contiguous() for k, v in state["unet"].items()}
if set(weights) != set(ref):
    raise SystemExit(f"{ckpt} does not hold the UNet of {src}: keys differ ({sorted(set(weights) ^ set(ref))[:5]})")
save_file(weights, f"{dst}/unet/diffusion_pytorch_model.safetensors")
print(f"{dst}: raw weights of step {state['step']}")
