// Host build of the kernel's per-pair step (raster_common.h), for tests on machines without a GPU: the same code
// the CUDA kernel runs, driven by a serial loop with a plain min instead of atomicMin. Compiled by the tests with
// `g++ -O2 -ffp-contract=off -shared -fPIC` and called through ctypes; not part of the extension.
#include <stdint.h>

#include "raster_common.h"

extern "C" void dreamkit_raster_zbuffer_host(const double* table, const int64_t* first, int64_t n_faces,
                                             int64_t total_pairs, int64_t width, int64_t n_pixels,
                                             long long* keys) {
  for (int64_t k = 0; k < total_pairs; ++k) {
    int64_t pixel;
    long long key;
    dk_pair_key(table, first, n_faces, width, k, &pixel, &key);
    if (key != DK_EMPTY_KEY && pixel >= 0 && pixel < n_pixels && key < keys[pixel]) keys[pixel] = key;
  }
}
