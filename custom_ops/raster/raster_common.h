// dreamkit triangle rasterizer: the per-(face, pixel) z-buffer step shared by the CUDA kernel (raster.cu) and a
// host build used by the tests (raster_host_check.cpp). It is the exact twin of `_zbuffer_torch` in
// dreamkit/render/raster.py: same per-face table (built by `_face_table` in torch), same float64 edge functions,
// same float32 depth and the same packed int64 keys `depth_bits << 32 | face`, reduced with a 64-bit atomic min
// (a z-test with "smallest face index wins" ties). Edge functions after Pineda 1988, "A parallel algorithm for
// polygon rasterization"; the packed depth|id z-buffer is the usual atomicMin trick of software rasterizers.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define DK_HD __host__ __device__ __forceinline__
#else
#define DK_HD inline
#endif

// Rows of the [16, n_faces] float64 table (keep in sync with _E0, _A, _B, _WZ, _NX, _FIRST, _BASE, _FACE).
#define DK_ROW_E0 0
#define DK_ROW_A 3
#define DK_ROW_B 6
#define DK_ROW_WZ 9
#define DK_ROW_NX 12
#define DK_ROW_FIRST 13
#define DK_ROW_BASE 14
#define DK_ROW_FACE 15
#define DK_TABLE_ROWS 16

#define DK_EMPTY_KEY 0x7fffffffffffffffLL

// Separately rounded double multiply and add: the torch twin never fuses them, so neither may we (nvcc contracts
// a*b+c into an FMA by default, which would change the last bit of the depth and thereby the ties).
#if defined(__CUDA_ARCH__)
DK_HD double dk_mul(double a, double b) { return __dmul_rn(a, b); }
DK_HD double dk_add(double a, double b) { return __dadd_rn(a, b); }
DK_HD double dk_div(double a, double b) { return __ddiv_rn(a, b); }
DK_HD uint32_t dk_float_bits(float f) { return (uint32_t)__float_as_uint(f); }
DK_HD float dk_to_float(double d) { return __double2float_rn(d); }
#else
DK_HD double dk_mul(double a, double b) { return a * b; }
DK_HD double dk_add(double a, double b) { return a + b; }
DK_HD double dk_div(double a, double b) { return a / b; }
DK_HD uint32_t dk_float_bits(float f) {
  union { float f; uint32_t u; } cast;
  cast.f = f;
  return cast.u;
}
DK_HD float dk_to_float(double d) { return (float)d; }
#endif

// Index of the face owning pair k: the last j with first[j] <= k (first is strictly increasing, first[0] == 0).
DK_HD int64_t dk_face_of_pair(const int64_t* first, int64_t n_faces, int64_t k) {
  int64_t lo = 0, hi = n_faces - 1;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (first[mid] <= k) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// The z-buffer step of pair k: writes the flat pixel index b*H*W + y*W + x and its key (DK_EMPTY_KEY when the
// pixel centre is outside the face). `table` is [16, n_faces] row-major.
DK_HD void dk_pair_key(const double* table, const int64_t* first, int64_t n_faces, int64_t width, int64_t k,
                       int64_t* pixel, long long* key) {
  const int64_t j = dk_face_of_pair(first, n_faces, k);
  const int64_t local = k - first[j];
  const int64_t nx = (int64_t)table[DK_ROW_NX * n_faces + j];
  const int64_t dy = local / nx;
  const int64_t dx = local - dy * nx;
  const double fx = (double)dx, fy = (double)dy;
  double e[3];
  bool inside = true;
  for (int i = 0; i < 3; ++i) {
    // Exact in float64 (snapped vertices, half-integer pixel centres), so any evaluation order gives these bits.
    e[i] = dk_add(dk_add(table[(DK_ROW_E0 + i) * n_faces + j], dk_mul(table[(DK_ROW_A + i) * n_faces + j], fx)),
                  dk_mul(table[(DK_ROW_B + i) * n_faces + j], fy));
    inside = inside && (e[i] >= 0.0);
  }
  // 1/z = ((e0·wz0 + e1·wz1) + e2·wz2), summed in this order like the twin's reduction over three rows.
  double inv = dk_mul(e[0], table[DK_ROW_WZ * n_faces + j]);
  inv = dk_add(inv, dk_mul(e[1], table[(DK_ROW_WZ + 1) * n_faces + j]));
  inv = dk_add(inv, dk_mul(e[2], table[(DK_ROW_WZ + 2) * n_faces + j]));
  const float depth = dk_to_float(dk_div(1.0, inv));
  const uint64_t face = (uint64_t)(int64_t)table[DK_ROW_FACE * n_faces + j];
  const uint64_t packed = ((uint64_t)dk_float_bits(depth) << 32) | (face & 0xffffffffULL);
  *key = inside ? (long long)packed : DK_EMPTY_KEY;
  *pixel = (int64_t)table[DK_ROW_BASE * n_faces + j] + dy * width + dx;
}
