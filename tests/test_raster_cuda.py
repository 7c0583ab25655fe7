"""The CUDA z-buffer kernel (custom_ops/raster) against the torch twin.

On any machine with g++: the kernel's per-pair step (raster_common.h, the code the kernel runs) built for the host
must give bit-identical keys to the torch twin. With a GPU: the real kernel, through rasterize_mesh(backend="cuda").
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from dreamkit.cameras import cameras_from_spherical
from dreamkit.render.raster import (_INT64_MAX, _face_table, _zbuffer_torch, antialias, interpolate, mesh_topology,
                                    rasterize_mesh)
from dreamkit.world.meshes import load_colored_mesh

SRC = Path(__file__).resolve().parents[1] / "custom_ops" / "raster"
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def random_mesh(n_faces=400, seed=0, dtype=torch.float32):
    """Random triangles in a ball (overlapping, many depth conflicts) plus the house (a real closed-ish mesh)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n_faces, 1, 3, generator=g) * 1.2 - 0.6
    tri = centres + 0.15 * torch.randn(n_faces, 3, 3, generator=g)
    verts, faces, _ = load_colored_mesh("meshes/house.ply")
    all_verts = torch.cat([verts, tri.reshape(-1, 3)]).to(dtype)
    all_faces = torch.cat([faces, len(verts) + torch.arange(3 * n_faces).view(n_faces, 3)])
    return all_verts, all_faces


def cameras(n=4, size=(56, 48)):
    return cameras_from_spherical(torch.linspace(-30, 40, n), torch.linspace(0, 300, n), torch.full((n,), 2.4),
                                  torch.full((n,), 45.0), *size)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the kernel's step for the host")
def test_kernel_step_built_for_host_matches_torch_twin_bit_for_bit(tmp_path):
    lib_path = tmp_path / "raster_host_check.so"
    subprocess.run(["g++", "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-I", str(SRC),
                    str(SRC / "raster_host_check.cpp"), "-o", str(lib_path)], check=True, capture_output=True)
    lib = ctypes.CDLL(str(lib_path))
    lib.dreamkit_raster_zbuffer_host.restype = None
    verts, faces = random_mesh()
    cams = cameras(size=(56, 48))
    W, H = 56, 48
    for cull in (False, True):
        table, first, counts = _face_table(verts, faces, cams.viewmats, cams.K, W, H, 0.01, cull)
        ref = torch.full((len(cams) * H * W,), _INT64_MAX, dtype=torch.int64)
        _zbuffer_torch(ref, table, first, counts, W, max_pairs=1 << 18)
        got = torch.full_like(ref, _INT64_MAX)
        ptr = ctypes.c_void_p
        lib.dreamkit_raster_zbuffer_host(ptr(table.data_ptr()), ptr(first.data_ptr()), ctypes.c_int64(table.shape[1]),
                                         ctypes.c_int64(int(counts.sum())), ctypes.c_int64(W),
                                         ctypes.c_int64(ref.numel()), ptr(got.data_ptr()))
        assert (ref != _INT64_MAX).sum() > 1000
        assert torch.equal(got, ref)


def test_cuda_backend_reports_what_is_missing():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: covered by the GPU tests")
    from dreamkit.render import cuda_raster

    with pytest.raises(cuda_raster.CudaOpUnavailable, match="backend='torch'"):
        cuda_raster.load()
    assert cuda_raster.available() is False


@needs_gpu
def test_cuda_kernel_matches_torch_twin(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))  # a fresh build in this test's folder
    dev = torch.device("cuda")
    verts, faces = random_mesh(dtype=torch.float64)
    cams = cameras(n=4, size=(96, 80))
    viewmats, Ks = cams.viewmats.to(dev).double(), cams.K.to(dev).double()
    v = verts.to(dev)
    f = faces.to(dev)
    ref = rasterize_mesh(v, f, viewmats, Ks, 96, 80, backend="torch")
    got = rasterize_mesh(v, f, viewmats, Ks, 96, 80, backend="cuda")
    # Same table, same arithmetic, same tie-break: identical up to (rare) one-ulp depth ties.
    same = got.face_id == ref.face_id
    assert same.float().mean() > 0.999
    torch.testing.assert_close(got.depth[same], ref.depth[same], atol=1e-4, rtol=0)
    torch.testing.assert_close(got.bary[same], ref.bary[same], atol=1e-4, rtol=0)
    # The CPU twin agrees too (its camera transform may round differently in the last bit).
    cpu = rasterize_mesh(verts, faces, cams.viewmats.double(), cams.K.double(), 96, 80)
    assert (got.face_id.cpu() == cpu.face_id).float().mean() > 0.999
    # Gradients through interpolate and antialias are the torch code's on either backend.
    topo = mesh_topology(f, v)
    attr = torch.rand(len(verts), 3, dtype=torch.float64, device=dev)
    grads = []
    for backend in ("torch", "cuda"):
        vg = v.clone().requires_grad_(True)
        frags = rasterize_mesh(vg, f, viewmats, Ks, 96, 80, backend=backend)
        img = antialias(torch.cat([interpolate(attr, frags), frags.mask[..., None].double()], -1), frags, vg,
                        viewmats, Ks, topology=topo)
        (grad,) = torch.autograd.grad(img.square().sum(), vg)
        grads.append(grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-3, rtol=1e-3)


@needs_gpu
def test_auto_backend_uses_the_kernel_for_cuda_tensors():
    from dreamkit.render import cuda_raster
    from dreamkit.render.raster import _resolve_backend

    expected = "cuda" if cuda_raster.available() else "torch"
    assert _resolve_backend("auto", torch.device("cuda")) == expected
    assert _resolve_backend("auto", torch.device("cpu")) == "torch"
