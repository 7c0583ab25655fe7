"""Time the triangle rasterizer: torch twin vs the CUDA kernel (custom_ops/raster) when a GPU is there.

    python scripts/bench_raster.py                     # ~20k faces, 512², 4 cameras
    python scripts/bench_raster.py --size 256 --repeat 2 --antialias
    python scripts/bench_raster.py --no-cpu --repeat 50      # on a GPU: twin on the GPU vs the kernel only

Prints milliseconds per call (forward z-buffer + differentiable barycentrics; with --antialias also the antialias
pass) and the torch/CUDA ratio. On a CPU-only machine it times the torch twin only and says why CUDA is skipped.
"""
from __future__ import annotations

import argparse
import time

import torch


def icosphere(subdivisions: int) -> tuple[torch.Tensor, torch.Tensor]:
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.8)
    return torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces, dtype=torch.long)


def time_call(fn, device: torch.device, repeat: int) -> float:
    fn()  # warm-up (and build, for the CUDA kernel)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeat * 1000.0


def main() -> None:
    from dreamkit.cameras import cameras_from_spherical
    from dreamkit.render.raster import antialias, mesh_topology, rasterize_mesh

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--subdivisions", type=int, default=5, help="icosphere level: 5 → 20480 faces")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--antialias", action="store_true", help="also time the antialias pass")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--no-cpu", action="store_true", help="skip the torch twin on the CPU (GPU runs only)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    verts, faces = icosphere(args.subdivisions)
    n = args.cameras
    cams = cameras_from_spherical(torch.linspace(-20, 30, n), torch.linspace(0, 270, n), torch.full((n,), 2.2),
                                  torch.full((n,), 45.0), args.size, args.size)
    print(f"{len(faces)} faces, {args.size}x{args.size}, {n} cameras")

    def runner(device: torch.device, backend: str):
        v, f = verts.to(device), faces.to(device)
        viewmats, Ks = cams.viewmats.to(device), cams.K.to(device)
        topo = mesh_topology(f, v) if args.antialias else None

        def run():
            frags = rasterize_mesh(v, f, viewmats, Ks, args.size, args.size, backend=backend)
            if args.antialias:
                antialias(frags.mask[..., None].float(), frags, v, viewmats, Ks, topology=topo)
        return run

    results = {}
    runs = [] if args.no_cpu else [(torch.device("cpu"), "torch")]
    if torch.cuda.is_available():
        runs += [(torch.device("cuda"), "torch"), (torch.device("cuda"), "cuda")]
    for device, backend in runs:
        name = f"{backend} on {device.type}"
        if backend == "cuda":
            from dreamkit.render import cuda_raster

            try:
                cuda_raster.load()
            except cuda_raster.CudaOpUnavailable as err:
                print(f"{name}: unavailable ({err})")
                continue
        results[name] = time_call(runner(device, backend), device, args.repeat)
        print(f"{name:>16}: {results[name]:9.1f} ms")
    if "cuda on cuda" in results:
        print(f"torch twin on GPU / CUDA kernel: {results['torch on cuda'] / results['cuda on cuda']:.1f}x")
    elif not torch.cuda.is_available():
        print("CUDA is unavailable here (no GPU visible to PyTorch): timed the torch twin only")


if __name__ == "__main__":
    main()
