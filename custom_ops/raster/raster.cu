// CUDA z-buffer pass of dreamkit's triangle rasterizer (forward only): one thread per (face, pixel-of-its-bounding-
// box) pair, each a 64-bit atomicMin of the packed key into the pixel's slot. The per-face set-up (projection,
// 1/256-px snapping, culling, bounding boxes) is done by the torch code in dreamkit/render/raster.py so that the
// kernel's keys are bit-identical to the torch twin's; differentiable barycentrics are recomputed in torch from the
// winning face ids. Layout follows the split of Laine et al. 2020 ("Modular Primitives for High-Performance
// Differentiable Rendering"): rasterize -> face ids, then interpolate/antialias in differentiable code.
//
// No torch headers here: this file compiles with nvcc alone; raster.cpp holds the PyTorch binding.
#include <cuda_runtime.h>
#include <stdint.h>

#include "raster_common.h"

namespace {

__global__ void zbuffer_kernel(const double* __restrict__ table, const int64_t* __restrict__ first, int64_t n_faces,
                               int64_t total_pairs, int64_t width, int64_t n_pixels, long long* __restrict__ keys) {
  const int64_t stride = (int64_t)blockDim.x * (int64_t)gridDim.x;
  for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < total_pairs; k += stride) {
    int64_t pixel;
    long long key;
    dk_pair_key(table, first, n_faces, width, k, &pixel, &key);
    if (key != DK_EMPTY_KEY && pixel >= 0 && pixel < n_pixels) {
      atomicMin(keys + pixel, key);  // signed 64-bit min, like torch's scatter_reduce("amin") on int64
    }
  }
}

}  // namespace

// Launches the kernel on `stream` (a cudaStream_t passed as void*). Returns a cudaError_t as int (0 = success).
int dreamkit_raster_zbuffer_launch(const double* table, const int64_t* first, int64_t n_faces, int64_t total_pairs,
                                   int64_t width, int64_t n_pixels, long long* keys, void* stream) {
  if (n_faces <= 0 || total_pairs <= 0) return 0;
  const int threads = 256;
  int64_t blocks = (total_pairs + threads - 1) / threads;
  if (blocks > 65536) blocks = 65536;  // grid-stride loop covers the rest
  zbuffer_kernel<<<(unsigned int)blocks, threads, 0, (cudaStream_t)stream>>>(table, first, n_faces, total_pairs,
                                                                             width, n_pixels, keys);
  return (int)cudaGetLastError();
}

const char* dreamkit_raster_error_string(int code) { return cudaGetErrorString((cudaError_t)code); }
