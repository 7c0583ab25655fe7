"""Cameras: one convention, random sampling, view-dependent prompts, orbit paths.

Convention (tested in tests/test_cameras.py):

* World frame: right-handed, **+Y up**, metres (the glTF convention, so exports need no axis swap). An object's
  *front* faces **+Z**.
* Camera frame: **OpenCV** — x right, y down, z forward (the camera looks along its +z). ``c2w`` maps camera to
  world coordinates; ``viewmats = inverse(c2w)`` is what gsplat calls ``viewmats``.
* Spherical placement around the origin: ``elevation`` (degrees) from the XZ plane towards +Y; ``azimuth`` (degrees)
  0 = camera on the +Z axis looking at the front, increasing towards +X (counter-clockwise seen from above),
  wrapped to (-180, 180]; ``distance`` from the origin. Position = d·(cos e·sin a, sin e, cos e·cos a).
* Intrinsics ``K`` in pixels with the principal point at the image centre; ``fovy`` is the vertical field of view.
* ``time`` in [0, 1] for 4D representations (zeros for static scenes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

__all__ = [
    "Cameras",
    "look_at",
    "cameras_from_spherical",
    "azimuth_rotation",
    "CameraSampler",
    "orbit_cameras",
    "view_direction_index",
    "VIEW_SUFFIXES",
]

# Index → prompt suffix, as DreamFusion's view-dependent prompting.
VIEW_SUFFIXES: tuple[str, ...] = ("front view", "side view", "back view", "overhead view")


@dataclass
class Cameras:
    """A batch of B pinhole cameras.

    Attributes:
        c2w: [B, 4, 4] camera-to-world, OpenCV camera axes.
        K: [B, 3, 3] intrinsics in pixels.
        width, height: image size in pixels (shared by the batch).
        elevation, azimuth, distance, fovy: [B] spherical parameters in degrees / scene units (for prompting,
            guidance and multi-view priors).
        time: [B] in [0, 1] for 4D scenes.
    """

    c2w: torch.Tensor
    K: torch.Tensor
    width: int
    height: int
    elevation: torch.Tensor
    azimuth: torch.Tensor
    distance: torch.Tensor
    fovy: torch.Tensor
    time: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.time is None:
            self.time = torch.zeros(self.c2w.shape[0], dtype=self.c2w.dtype, device=self.c2w.device)

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def viewmats(self) -> torch.Tensor:
        """[B, 4, 4] world-to-camera (OpenCV), the ``viewmats`` of gsplat."""
        # inv_ex: the same inverse without linalg.inv's singularity check, which reads a flag back from the GPU
        return torch.linalg.inv_ex(self.c2w).inverse

    @property
    def positions(self) -> torch.Tensor:
        """[B, 3] camera centres in world coordinates."""
        return self.c2w[:, :3, 3]

    def to(self, device) -> "Cameras":
        return Cameras(
            c2w=self.c2w.to(device), K=self.K.to(device), width=self.width, height=self.height,
            elevation=self.elevation.to(device), azimuth=self.azimuth.to(device),
            distance=self.distance.to(device), fovy=self.fovy.to(device), time=self.time.to(device),
        )

    def __getitem__(self, idx) -> "Cameras":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return Cameras(
            c2w=self.c2w[idx], K=self.K[idx], width=self.width, height=self.height,
            elevation=self.elevation[idx], azimuth=self.azimuth[idx], distance=self.distance[idx],
            fovy=self.fovy[idx], time=self.time[idx],
        )

    def time_groups(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(the distinct times [T], ascending; for each, the indices of the cameras at it) — a 4D scene is drawn
        once per distinct time."""
        times, inverse = torch.unique(self.time, return_inverse=True)
        return times, [(inverse == i).nonzero().flatten() for i in range(len(times))]

    def with_resolution(self, width: int, height: int) -> "Cameras":
        """Same poses and field of view at another image size (intrinsics rescaled)."""
        K = self.K.clone()
        K[:, 0] *= width / self.width
        K[:, 1] *= height / self.height
        return Cameras(self.c2w, K, width, height, self.elevation, self.azimuth, self.distance, self.fovy, self.time)

    @staticmethod
    def cat(cams: Sequence["Cameras"]) -> "Cameras":
        w, h = cams[0].width, cams[0].height
        if any(c.width != w or c.height != h for c in cams):
            raise ValueError("Cameras.cat needs one image size for all batches")
        return Cameras(
            torch.cat([c.c2w for c in cams]), torch.cat([c.K for c in cams]), w, h,
            torch.cat([c.elevation for c in cams]), torch.cat([c.azimuth for c in cams]),
            torch.cat([c.distance for c in cams]), torch.cat([c.fovy for c in cams]),
            torch.cat([c.time for c in cams]),
        )


def look_at(position: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """OpenCV camera-to-world matrices looking from ``position`` [B,3] at ``target`` [B,3] with world ``up`` [3].

    Returns [B, 4, 4]. The camera's +z points at the target, +x to the right in the image, +y down.
    """
    forward = torch.nn.functional.normalize(target - position, dim=-1)
    up = up.to(position).expand_as(forward)
    right = torch.linalg.cross(forward, up, dim=-1)
    # Looking straight up or down: fall back to a fixed right vector so the basis stays defined.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    right = torch.where(degenerate, torch.tensor([1.0, 0.0, 0.0], dtype=position.dtype, device=position.device), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    down = torch.linalg.cross(forward, right, dim=-1)
    c2w = torch.eye(4, dtype=position.dtype, device=position.device).repeat(position.shape[0], 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = down
    c2w[:, :3, 2] = forward
    c2w[:, :3, 3] = position
    return c2w


def intrinsics_from_fovy(fovy_deg: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[B] vertical field of view (degrees) → [B, 3, 3] pixel intrinsics, square pixels, centred principal point."""
    focal = 0.5 * height / torch.tan(torch.deg2rad(fovy_deg) / 2)
    K = torch.zeros(fovy_deg.shape[0], 3, 3, dtype=fovy_deg.dtype, device=fovy_deg.device)
    K[:, 0, 0] = focal
    K[:, 1, 1] = focal
    K[:, 0, 2] = width / 2
    K[:, 1, 2] = height / 2
    K[:, 2, 2] = 1
    return K


def azimuth_rotation(azimuth_deg: torch.Tensor) -> torch.Tensor:
    """[N] degrees → [N, 3, 3] rotations about +Y taking +Z to the side of a camera at that azimuth (the convention of
    :func:`cameras_from_spherical`: azimuth 0 looks from +Z, azimuth 90 from +X)."""
    a = torch.deg2rad(azimuth_deg.float())
    c, s = torch.cos(a), torch.sin(a)
    r = torch.zeros(a.shape[0], 3, 3, device=a.device)
    r[:, 0, 0], r[:, 0, 2], r[:, 1, 1], r[:, 2, 0], r[:, 2, 2] = c, s, 1.0, -s, c
    return r


def cameras_from_spherical(
    elevation: torch.Tensor,
    azimuth: torch.Tensor,
    distance: torch.Tensor,
    fovy: torch.Tensor,
    width: int,
    height: int,
    target: Optional[torch.Tensor] = None,
    time: Optional[torch.Tensor] = None,
) -> Cameras:
    """Cameras on spheres around ``target`` (default origin); all angles in degrees, tensors [B]."""
    el = torch.deg2rad(elevation)
    az = torch.deg2rad(azimuth)
    pos = torch.stack(
        [distance * torch.cos(el) * torch.sin(az), distance * torch.sin(el), distance * torch.cos(el) * torch.cos(az)],
        dim=-1,
    )
    if target is None:
        target = torch.zeros_like(pos)
    pos = pos + target
    up = torch.tensor([0.0, 1.0, 0.0], dtype=pos.dtype, device=pos.device)
    c2w = look_at(pos, target.expand_as(pos), up)
    K = intrinsics_from_fovy(fovy, width, height)
    az_wrapped = torch.remainder(azimuth + 180.0, 360.0) - 180.0
    return Cameras(c2w, K, width, height, elevation, az_wrapped, distance, fovy, time)


def view_direction_index(
    elevation: torch.Tensor,
    azimuth: torch.Tensor,
    front_threshold: float = 45.0,
    back_threshold: float = 45.0,
    overhead_threshold: float = 60.0,
) -> torch.Tensor:
    """[B] index into :data:`VIEW_SUFFIXES` (0 front, 1 side, 2 back, 3 overhead), as DreamFusion.

    front: |azimuth| < front_threshold; back: |azimuth| > 180 - back_threshold; overhead: elevation > overhead_threshold
    (takes precedence); side otherwise.
    """
    az = torch.remainder(azimuth + 180.0, 360.0) - 180.0
    idx = torch.ones_like(az, dtype=torch.long)
    idx = torch.where(az.abs() < front_threshold, torch.zeros_like(idx), idx)
    idx = torch.where(az.abs() > 180.0 - back_threshold, torch.full_like(idx, 2), idx)
    idx = torch.where(elevation > overhead_threshold, torch.full_like(idx, 3), idx)
    return idx


class CameraSampler:
    """Draws batches of random cameras, uniformly within ranges that may be schedules.

    Ranges are given as (low, high) pairs of *values at the current step* — the caller evaluates schedules. Elevation
    is drawn uniformly in angle (not in area) unless ``uniform_sphere`` is set, which draws uniformly on the sphere
    band as DreamFusion does.
    """

    def __init__(self, generator: Optional[torch.Generator] = None):
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=self.generator)

    def sample(
        self,
        batch_size: int,
        width: int,
        height: int,
        elevation_range: tuple[float, float],
        azimuth_range: tuple[float, float],
        distance_range: tuple[float, float],
        fovy_range: tuple[float, float],
        uniform_sphere: bool = False,
        time_range: tuple[float, float] = (0.0, 0.0),
        views: int = 1,
        frames: int = 1,
        azimuth_step: float = 0.0,
    ) -> Cameras:
        """``views`` > 1 draws ``batch_size / views`` groups (group-major) for multi-view priors: in a group the
        azimuths are ``a0 + k·360°/views`` (90° apart for 4 views, as MVDream) and elevation, distance, field of view
        and time are shared.

        ``frames`` F > 1 makes each group a clip (4D): every view is repeated over F frames (image
        ``g·V·F + v·F + f``) at times τ_f = τ₀ + f·(hi − lo)/F with τ₀ ~ U(lo, lo + (hi − lo)/F) (4D-fy's clip
        times), and its azimuth turns by ``azimuth_step`` degrees per frame (0: a still camera per clip)."""
        group = views * frames
        if views < 1 or frames < 1 or batch_size % group:
            raise ValueError(f"camera.batch_size={batch_size} must be a multiple of camera.views={views} × "
                             f"camera.frames={frames}")
        n = batch_size // group
        if uniform_sphere:
            lo, hi = (math.sin(math.radians(e)) for e in elevation_range)
            elevation = torch.rad2deg(torch.asin(self._uniform(n, lo, hi)))
        else:
            elevation = self._uniform(n, *elevation_range)
        azimuth = self._uniform(n, *azimuth_range)
        distance = self._uniform(n, *distance_range)
        fovy = self._uniform(n, *fovy_range)
        t_lo, t_hi = time_range
        span = (t_hi - t_lo) / frames
        time = self._uniform(n, t_lo, t_lo + span) if frames > 1 else self._uniform(n, t_lo, t_hi)
        if views > 1:
            offsets = torch.arange(views, dtype=torch.float32) * (360.0 / views)
            azimuth = (azimuth[:, None] + offsets[None]).reshape(-1)
            elevation, distance, fovy, time = (x.repeat_interleave(views) for x in (elevation, distance, fovy, time))
        if frames > 1:
            f = torch.arange(frames, dtype=torch.float32)
            azimuth = (azimuth[:, None] + azimuth_step * f[None]).reshape(-1)
            time = (time[:, None] + span * f[None]).reshape(-1)
            elevation, distance, fovy = (x.repeat_interleave(frames) for x in (elevation, distance, fovy))
        return cameras_from_spherical(elevation, azimuth, distance, fovy, width, height, time=time)


def orbit_cameras(
    n_frames: int,
    width: int,
    height: int,
    elevation: float = 15.0,
    distance: float = 3.0,
    fovy: float = 40.0,
    start_azimuth: float = 0.0,
    time_loop: bool = False,
) -> Cameras:
    """A turntable: ``n_frames`` cameras evenly spaced over 360° of azimuth at a fixed elevation and distance.

    ``time_loop`` sweeps time 0→1 along the orbit (for 4D turntables).
    """
    az = start_azimuth + torch.arange(n_frames, dtype=torch.float32) * (360.0 / n_frames)
    el = torch.full((n_frames,), float(elevation))
    d = torch.full((n_frames,), float(distance))
    fov = torch.full((n_frames,), float(fovy))
    time = torch.linspace(0, 1, n_frames) if time_loop else None
    return cameras_from_spherical(el, az, d, fov, width, height, time=time)
