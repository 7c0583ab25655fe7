"""nerfacc's CUDA ray marching (the volume renderer's fast path) against our dense PyTorch twin.

Both march the same analytic field through the same occupancy bitfield: an anisotropic, off-centre density blob whose
empty cells the grid skips (so a transposed or misaligned grid would cut visible density away), colours and normals
that depend on position through parameters. The two sample differently (nerfacc: one step for every ray; the twin:
``n_samples`` over each ray's own span), so they agree to the quadrature error, which the CPU test below measures for
the twin itself (n vs 2n samples) and the GPU test uses as its tolerance.
"""
from __future__ import annotations

import pytest
import torch

from dreamkit.cameras import orbit_cameras
from dreamkit.render.volume import OccupancyGrid, generate_rays, render_field

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SAMPLES = 384
# absolute, on rgb / opacity in [0, 1]; depth: × 3.5 (the box diagonal). The maxima come from the occupancy cells'
# edges, where a sample switches on or off (a first-order error); the means are second order. A transposed grid
# gives max 0.93 and mean 0.04 on opacity.
TOL_MAX, TOL_MEAN = 4e-2, 2e-3
GRAD_REL = 2e-2  # relative difference of the parameters' gradients (the twin's own: 2e-3 to 4e-3)


class BlobField(torch.nn.Module):
    """σ(x) = a·exp(−½ Σ_d ((x_d − c_d)/s_d)²), rgb = sigmoid(W x + b), normal = (x − c)/‖x − c‖."""

    def __init__(self):
        super().__init__()
        self.amplitude = torch.nn.Parameter(torch.tensor(25.0))
        self.register_buffer("centre", torch.tensor([0.15, -0.1, 0.05]))
        self.register_buffer("sigma", torch.tensor([0.30, 0.40, 0.22]))
        gen = torch.Generator().manual_seed(3)
        self.weight = torch.nn.Parameter(torch.randn(3, 3, generator=gen) * 2)
        self.bias = torch.nn.Parameter(torch.randn(3, generator=gen) * 0.3)

    def density(self, x):
        return self.amplitude * torch.exp(-0.5 * (((x - self.centre) / self.sigma) ** 2).sum(-1))

    def field(self, x, d, normals=True):
        out = {"sigma": self.density(x), "rgb": torch.sigmoid(x @ self.weight.T + self.bias)}
        if normals:
            out["normal"] = torch.nn.functional.normalize(x - self.centre, dim=-1)
        return out


def _scene(device):
    """Built on the CPU (the occupancy grid's random probes included), then moved: both paths see the same grid."""
    torch.manual_seed(0)
    blob = BlobField()
    aabb = torch.tensor([-1.0, -1, -1, 1, 1, 1])
    grid = OccupancyGrid(aabb, 32)
    step = float((aabb[3:] - aabb[:3]).norm()) / SAMPLES
    for _ in range(3):
        grid.update(blob.density, step, threshold=0.01, generator=torch.Generator().manual_seed(1))
    cams = orbit_cameras(3, 40, 32, elevation=25, distance=2.6, fovy=45)
    return blob.to(device), aabb.to(device), grid.to(device), generate_rays(cams.to(device))


def _render(blob, aabb, grid, rays, n_samples, normals=True):
    return render_field(rays, aabb, blob.density, lambda x, d: blob.field(x, d, normals), n_samples=n_samples,
                        occupancy=grid, stratified=False, early_stop_eps=1e-4)


def _outputs_and_grads(out, blob, weights):
    loss = sum((out[k] * w).sum() for k, w in weights.items())
    grads = torch.autograd.grad(loss, [blob.amplitude, blob.weight, blob.bias])
    return {k: out[k].detach().cpu() for k in weights}, [g.cpu() for g in grads]


def _weights(n_rays, device):
    gen = torch.Generator().manual_seed(5)
    return {"rgb": torch.randn(n_rays, 3, generator=gen).to(device),
            "opacity": torch.randn(n_rays, 1, generator=gen).to(device),
            "depth": torch.randn(n_rays, 1, generator=gen).to(device),
            "orient": torch.randn(n_rays, generator=gen).to(device)}


def test_twin_quadrature_error_is_within_the_gpu_tolerance():
    """The tolerance of the GPU comparison is honest: the twin at n and 2n samples differs by well under it, while
    the scene is not trivial (the grid skips cells, the blob covers part of every image)."""
    blob, aabb, grid, rays = _scene(torch.device("cpu"))
    occupied = grid.occupied.float().mean()
    assert 0.02 < occupied < 0.6
    a = _render(blob, aabb, grid, rays, SAMPLES)
    assert 0.1 < (a["opacity"] > 0.5).float().mean() < 0.9
    weights = _weights(rays.origins.shape[0], torch.device("cpu"))
    _, grads_a = _outputs_and_grads(a, blob, weights)
    for n in (SAMPLES + 13, 2 * SAMPLES):  # other sample positions, as nerfacc's are
        b = _render(blob, aabb, grid, rays, n)
        _, grads_b = _outputs_and_grads(b, blob, weights)
        for ga, gb in zip(grads_a, grads_b):
            assert (ga - gb).norm() / ga.norm() < GRAD_REL / 4
        for key, scale in (("rgb", 1.0), ("opacity", 1.0), ("orient", 1.0), ("depth", 3.5)):
            diff = (a[key] - b[key]).detach().abs()
            assert diff.max() < TOL_MAX * scale / 2, (n, key, float(diff.max()))
            assert diff.mean() < TOL_MEAN * scale / 4, (n, key, float(diff.mean()))


@needs_gpu
def test_nerfacc_marching_matches_the_dense_twin():
    pytest.importorskip("nerfacc")
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    results = {}
    for device in (cpu, gpu):
        blob, aabb, grid, rays = _scene(device)
        out = _render(blob, aabb, grid, rays, SAMPLES)
        if device.type == "cuda":
            assert "ray_indices" in out, "the CUDA path did not use nerfacc"
        results[device.type] = _outputs_and_grads(out, blob, _weights(rays.origins.shape[0], device))
    (twin, twin_grads), (acc, acc_grads) = results["cpu"], results["cuda"]
    assert (twin["opacity"] > 0.5).float().mean() > 0.1
    for key, scale in (("rgb", 1.0), ("opacity", 1.0), ("orient", 1.0), ("depth", 3.5)):
        diff = (twin[key] - acc[key]).abs()
        print(f"{key}: |nerfacc − twin| max {float(diff.max()):.3g}, mean {float(diff.mean()):.3g}")
        assert diff.max() < TOL_MAX * scale, f"{key}: max |nerfacc − twin| = {float(diff.max()):.3g}"
        assert diff.mean() < TOL_MEAN * scale, f"{key}: mean |nerfacc − twin| = {float(diff.mean()):.3g}"
    for name, a, b in zip(("amplitude", "weight", "bias"), twin_grads, acc_grads):
        rel = (a - b).norm() / a.norm().clamp_min(1e-12)
        assert rel < GRAD_REL, f"d loss / d {name}: relative difference {rel:.3g}"


@needs_gpu
def test_nerf_model_renders_on_cuda_like_on_cpu():
    """The whole NeRF representation (hash grid, normals, the orientation term) through nerfacc and the twin."""
    pytest.importorskip("nerfacc")
    from dreamkit.representations.nerf import NeRFConfig, NeRFModel

    cfg = NeRFConfig(normals="finite_difference", num_samples=256)
    model = NeRFModel(cfg)
    model.eval()
    cams = orbit_cameras(2, 24, 24, elevation=20, distance=2.5, fovy=45)
    outs = {}
    for device in ("cpu", "cuda"):
        m = model.to(device)
        c = cams.to(device)
        with torch.no_grad():
            out = m.render(c, background=torch.full((2, 3), 0.5, device=device))
        outs[device] = out
    a, b = outs["cpu"], outs["cuda"]
    assert torch.isfinite(b.rgb).all() and torch.isfinite(b.extras["orient"]).all()
    assert (a.alpha - b.alpha.cpu()).abs().max() < 5e-2
    assert (a.rgb - b.rgb.cpu()).abs().mean() < 1e-2
