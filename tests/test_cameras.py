"""The documented camera convention: world +Y up, front faces +Z, OpenCV camera axes (x right, y down, z forward)."""
import pytest
import torch

from dreamkit.cameras import (CameraSampler, cameras_from_spherical, orbit_cameras, view_direction_index)


def project(cams, points):
    """Pinhole projection by hand from c2w and K: [B,3] points → [B,2] pixels, [B] depth."""
    w2c = torch.linalg.inv(cams.c2w)
    p = torch.cat([points, torch.ones(points.shape[0], 1)], -1)
    cam = (w2c @ p[..., None])[..., :3, 0]
    uv = (cams.K @ cam[..., None])[..., 0]
    return uv[:, :2] / uv[:, 2:], cam[:, 2]


def one(el, az, d=3.0, fov=40.0, size=64):
    t = lambda v: torch.tensor([float(v)])
    return cameras_from_spherical(t(el), t(az), t(d), t(fov), size, size)


def test_front_camera_axes():
    cams = one(0, 0)
    assert torch.allclose(cams.positions[0], torch.tensor([0.0, 0.0, 3.0]), atol=1e-6)  # front camera on +Z
    uv, depth = project(cams, torch.zeros(1, 3))
    assert torch.allclose(uv, torch.tensor([[32.0, 32.0]]), atol=1e-4) and depth.item() == pytest.approx(3.0)
    uv_up, _ = project(cams, torch.tensor([[0.0, 0.5, 0.0]]))
    assert uv_up[0, 1] < 32  # +Y appears above the centre (rows grow downwards)
    uv_x, _ = project(cams, torch.tensor([[0.5, 0.0, 0.0]]))
    assert uv_x[0, 0] > 32  # +X appears on the right when looking at the front


def test_azimuth_direction_and_elevation():
    cams = one(0, 90)
    assert torch.allclose(cams.positions[0], torch.tensor([3.0, 0.0, 0.0]), atol=1e-5)  # azimuth 90 → +X
    cams = one(90 - 1e-3, 0)
    assert cams.positions[0, 1] == pytest.approx(3.0, abs=1e-3)  # elevation 90 → overhead
    cams = one(30, 0)
    assert cams.positions[0, 1] == pytest.approx(1.5, abs=1e-5)


def test_c2w_is_rigid_and_focal_from_fov():
    cams = orbit_cameras(8, 32, 32, elevation=20, distance=2.0, fovy=60.0)
    r = cams.c2w[:, :3, :3]
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3).expand(8, 3, 3), atol=1e-5)
    assert torch.allclose(torch.det(r), torch.ones(8), atol=1e-5)
    assert cams.K[0, 1, 1].item() == pytest.approx(16 / torch.tan(torch.deg2rad(torch.tensor(30.0))).item())
    assert torch.allclose(cams.positions.norm(dim=-1), torch.full((8,), 2.0), atol=1e-5)


def test_view_suffix_indices():
    el = torch.tensor([0.0, 0.0, 0.0, 0.0, 70.0])
    az = torch.tensor([10.0, 90.0, 179.0, -100.0, 0.0])
    assert view_direction_index(el, az).tolist() == [0, 1, 2, 1, 3]
    assert view_direction_index(el, az, front_threshold=100.0).tolist()[1] == 0


def test_sampler_ranges_and_determinism():
    a = CameraSampler(torch.Generator().manual_seed(3)).sample(256, 16, 16, (-10, 45), (-180, 180), (2, 3), (30, 50))
    b = CameraSampler(torch.Generator().manual_seed(3)).sample(256, 16, 16, (-10, 45), (-180, 180), (2, 3), (30, 50))
    assert torch.equal(a.c2w, b.c2w)
    assert a.elevation.min() >= -10 and a.elevation.max() <= 45
    assert a.distance.min() >= 2 and a.distance.max() <= 3
    assert a.fovy.min() >= 30 and a.fovy.max() <= 50
    s = CameraSampler(torch.Generator().manual_seed(0)).sample(4000, 8, 8, (0, 90), (-180, 180), (2, 2), (40, 40),
                                                               uniform_sphere=True)
    # uniform on the sphere: sin(elevation) is uniform, so half the samples lie below 30°
    assert (s.elevation < 30).float().mean().item() == pytest.approx(0.5, abs=0.03)
