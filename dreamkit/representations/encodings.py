"""Input encodings for neural fields: multi-resolution hash grid and frequency (positional) encoding.

* :class:`HashGridEncoding` — Müller et al. 2022, "Instant Neural Graphics Primitives with a Multiresolution Hash
  Encoding" (instant-ngp): L levels of grids with geometrically growing resolution; each level stores F features
  per vertex, densely while (res+1)³ ≤ T, otherwise in a table of T entries indexed by the spatial hash
  ``(x·1 ⊕ y·2654435761 ⊕ z·805459861) mod T``; a point's feature per level is the trilinear interpolation of its
  cell's 8 corners. Pure PyTorch: a dense level is one ``grid_sample`` (trilinear over the vertex grid, exact and
  much faster on CPU than gathering corners), a hashed level gathers its 8 corners with broadcast per-axis hashes.
  tiny-cuda-nn is used instead only when importable *and* CUDA is available (imported inside a function, never at
  module import).
* :class:`FrequencyEncoding` — Mildenhall et al. 2020 (NeRF) positional encoding ``[x, sin(2^k π x), cos(2^k π x)]``.

Inputs are points normalised to [0, 1]³ (the caller maps its bounding box there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..config import sched

__all__ = ["HashGridConfig", "HashGridEncoding", "hash_grid_from_config", "FrequencyEncoding", "HASH_PRIMES",
           "hash_grid_reference_level"]

#: instant-ngp's spatial-hash primes (the first is 1 so that coherent x stays cache-friendly)
HASH_PRIMES = (1, 2654435761, 805459861)

# the 8 corners of a unit cell, [8, 3] in {0,1}
_CORNERS = torch.tensor([[(i >> 0) & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=torch.long)


@dataclass
class HashGridConfig:
    """Hash-grid fields of a representation config (NeRF's field, the mesh representations' material field).
    The defaults keep every level dense (16 … 71 vertices per side): on CPU a dense level is one grid_sample; raise
    log2_hashmap_size/levels on CUDA for finer detail."""

    n_levels: int = 6
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.35
    #: learning rate (number or schedule) of the grid tables
    lr_encoding: Any = sched(1e-2)
    #: auto (tiny-cuda-nn encoding on CUDA when importable) | torch
    backend: str = "auto"


def _tcnn_available() -> bool:
    try:
        import tinycudann  # noqa: F401
    except Exception:
        return False
    return True


class HashGridEncoding(nn.Module):
    """Multi-resolution hash encoding (Müller et al. 2022).

    Args:
        n_levels: L, number of resolution levels.
        n_features_per_level: F, features stored per grid vertex.
        log2_hashmap_size: log2 T, entries per level (a level whose dense vertex count fits is stored densely).
        base_resolution: N_min, resolution of the coarsest level.
        per_level_scale: growth factor b between levels: N_l = floor(N_min · b^l).
        init_scale: features are initialised uniformly in [-init_scale, init_scale] (instant-ngp uses 1e-4).
        backend: "auto" (tiny-cuda-nn on CUDA when importable) | "torch".

    Shapes: ``forward(x [..., 3] in [0,1]) -> [..., L·F]``.
    """

    def __init__(self, n_levels: int = 16, n_features_per_level: int = 2, log2_hashmap_size: int = 19,
                 base_resolution: int = 16, per_level_scale: float = 1.447, init_scale: float = 1e-4,
                 backend: str = "auto", generator: Optional[torch.Generator] = None):
        super().__init__()
        self.n_levels = n_levels
        self.n_features_per_level = n_features_per_level
        self.log2_hashmap_size = log2_hashmap_size
        self.base_resolution = base_resolution
        self.per_level_scale = per_level_scale
        self.backend = backend
        self.output_dim = n_levels * n_features_per_level
        table = 2 ** log2_hashmap_size
        resolutions, sizes, dense = [], [], []
        for level in range(n_levels):
            res = int(math.floor(base_resolution * per_level_scale ** level))
            resolutions.append(res)
            n_dense = (res + 1) ** 3
            dense.append(n_dense <= table)
            sizes.append(min(n_dense, table))
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        self.resolutions = resolutions
        self._sizes, self._offsets, self._dense_levels = sizes, offsets[:-1], dense
        self.register_buffer("_res", torch.tensor(resolutions, dtype=torch.long), persistent=False)
        self.register_buffer("_size", torch.tensor(sizes, dtype=torch.long), persistent=False)
        self.register_buffer("_offset", torch.tensor(offsets[:-1], dtype=torch.long), persistent=False)
        self.register_buffer("_dense", torch.tensor(dense, dtype=torch.bool), persistent=False)
        self.register_buffer("_primes", torch.tensor(HASH_PRIMES, dtype=torch.long), persistent=False)
        self.register_buffer("_corners", _CORNERS.clone(), persistent=False)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        # one table for all levels (rows offset per level) so a single gather serves every level
        init = (torch.rand(offsets[-1], n_features_per_level, generator=generator) * 2 - 1) * init_scale
        self.embeddings = nn.Parameter(init)
        # tiny-cuda-nn twin: built here (not lazily) so its parameters exist when the optimizer is made. Its table
        # layout is its own, so a checkpoint trained with it carries extra keys ("tcnn.params") and the torch path
        # does not read them: train and render on the same kind of machine.
        self.tcnn = None
        if backend == "auto" and torch.cuda.is_available() and _tcnn_available():
            import tinycudann as tcnn

            self.tcnn = tcnn.Encoding(3, {
                "otype": "HashGrid", "n_levels": n_levels, "n_features_per_level": n_features_per_level,
                "log2_hashmap_size": log2_hashmap_size, "base_resolution": base_resolution,
                "per_level_scale": per_level_scale})

    # -- index computation -------------------------------------------------------------------------------------
    def corner_indices_and_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, 3] in [0,1] → rows into ``embeddings`` [N, L, 8] and trilinear weights [N, L, 8].

        All levels at once (memory-heavy; a second reference for tests and for porting, not the forward path)."""
        res = self._res.to(x.dtype)                                     # [L]
        pos = x[:, None, :] * res[None, :, None]                        # [N, L, 3] (vertex units)
        cell = torch.floor(pos).long()
        cell = torch.minimum(cell, self._res[None, :, None] - 1).clamp_min(0)  # x = 1 stays in the last cell
        frac = pos - cell.to(x.dtype)                                   # [N, L, 3]
        corner = cell[:, :, None, :] + self._corners[None, None]        # [N, L, 8, 3]
        # trilinear weights: Π_d (frac_d if corner_d else 1 - frac_d)
        c = self._corners.to(x.dtype)[None, None]                       # [1, 1, 8, 3]
        w = (c * frac[:, :, None, :] + (1 - c) * (1 - frac[:, :, None, :])).prod(dim=-1)  # [N, L, 8]
        stride = (self._res + 1)[None, :, None]                         # dense row-major index
        dense_idx = corner[..., 0] + stride * (corner[..., 1] + stride * corner[..., 2])
        h = corner * self._primes                                       # spatial hash (int64 wrap is harmless:
        hashed = torch.bitwise_xor(torch.bitwise_xor(h[..., 0], h[..., 1]), h[..., 2])  # only low bits are kept)
        hashed = torch.remainder(hashed, self._size[None, :, None])
        idx = torch.where(self._dense[None, :, None], dense_idx, hashed) + self._offset[None, :, None]
        return idx, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        x = x.reshape(-1, 3)
        if x.is_cuda and self.tcnn is not None:
            return self.tcnn(x).float().reshape(*shape, self.output_dim)
        feats = [self._level(x, level) for level in range(self.n_levels)]
        return torch.cat(feats, dim=-1).reshape(*shape, self.output_dim)

    def _level(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """x [N, 3] in [0,1] → [N, F] for one level."""
        res, size, offset = self.resolutions[level], self._sizes[level], self._offsets[level]
        table = self.embeddings[offset:offset + size]
        F = self.n_features_per_level
        if self._dense_levels[level]:
            # a dense level is a (res+1)³ vertex grid: trilinear interpolation of vertices is exactly
            # grid_sample(align_corners=True), which is far faster on CPU than gathering 8 corners by hand.
            s = res + 1
            volume = table.view(s, s, s, F).permute(3, 0, 1, 2)[None]    # [1, F, z, y, x] (row = x + s·(y + s·z))
            grid = (x * 2 - 1).view(1, -1, 1, 1, 3)
            out = torch.nn.functional.grid_sample(volume, grid, mode="bilinear", padding_mode="border",
                                                  align_corners=True)
            return out.view(F, -1).t()
        # hashed level: the 8 corners' hashes built per axis and combined by broadcasting (x ⊕ y ⊕ z)
        pos = x * res
        cell = torch.floor(pos).long().clamp(0, res - 1)
        frac = pos - cell.to(x.dtype)                                    # [N, 3]
        two = torch.arange(2, device=x.device)
        h = (cell[:, :, None] + two) * self._primes[None, :, None]       # [N, 3, 2]
        w = torch.stack([1 - frac, frac], dim=-1)                        # [N, 3, 2]
        idx = torch.bitwise_xor(torch.bitwise_xor(h[:, 0, :, None, None], h[:, 1, None, :, None]),
                                h[:, 2, None, None, :])                  # [N, 2, 2, 2] (x, y, z bits)
        idx = torch.remainder(idx, size).reshape(-1)
        weights = (w[:, 0, :, None, None] * w[:, 1, None, :, None] * w[:, 2, None, None, :]).reshape(-1, 8, 1)
        corners = table.index_select(0, idx).view(-1, 8, F)
        return (corners * weights).sum(dim=1)


def hash_grid_from_config(cfg: Any, generator: Optional[torch.Generator] = None) -> "HashGridEncoding":
    """The encoding a :class:`HashGridConfig` (or a config with its fields) describes."""
    return HashGridEncoding(cfg.n_levels, cfg.n_features_per_level, cfg.log2_hashmap_size, cfg.base_resolution,
                            cfg.per_level_scale, backend=cfg.backend, generator=generator)


def hash_grid_reference_level(enc: HashGridEncoding, x: torch.Tensor, level: int) -> torch.Tensor:
    """Slow reference for one level: loops over points and corners. x [N,3] → [N, F]. For tests."""
    res = enc.resolutions[level]
    size = int(enc._size[level])
    offset = int(enc._offset[level])
    dense = bool(enc._dense[level])
    out = torch.zeros(x.shape[0], enc.n_features_per_level, dtype=x.dtype)
    for n in range(x.shape[0]):
        p = [float(v) * res for v in x[n]]
        base = [min(max(int(math.floor(v)), 0), res - 1) for v in p]
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    c = (base[0] + dx, base[1] + dy, base[2] + dz)
                    w = 1.0
                    for d, bit in enumerate((dx, dy, dz)):
                        f = p[d] - base[d]
                        w *= f if bit else 1 - f
                    if dense:
                        i = c[0] + (res + 1) * (c[1] + (res + 1) * c[2])
                    else:
                        i = ((c[0] * HASH_PRIMES[0]) ^ (c[1] * HASH_PRIMES[1]) ^ (c[2] * HASH_PRIMES[2])) % size
                    out[n] += w * enc.embeddings[offset + i].detach()
    return out


class FrequencyEncoding(nn.Module):
    """NeRF positional encoding (Mildenhall et al. 2020): x [..., D] → [..., D·(1 + 2·n_frequencies)].

    ``[x, sin(2^0 π x), cos(2^0 π x), …, sin(2^{K-1} π x), cos(2^{K-1} π x)]`` (sin/cos grouped per frequency).
    """

    def __init__(self, in_dim: int = 3, n_frequencies: int = 6, include_input: bool = True):
        super().__init__()
        self.in_dim = in_dim
        self.n_frequencies = n_frequencies
        self.include_input = include_input
        self.register_buffer("freqs", (2.0 ** torch.arange(n_frequencies)) * math.pi, persistent=False)
        self.output_dim = in_dim * (2 * n_frequencies + (1 if include_input else 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = x[..., None, :] * self.freqs[:, None]                  # [..., K, D]
        enc = torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=-1).flatten(-2)  # [..., K·2D]
        return torch.cat([x, enc], dim=-1) if self.include_input else enc
