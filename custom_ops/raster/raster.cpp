// PyTorch binding of the CUDA z-buffer kernel in raster.cu. No CUDA headers: the caller (dreamkit/render/
// cuda_raster.py) selects the device and passes the current CUDA stream as an integer.
#include <torch/extension.h>

#include <cstdint>

int dreamkit_raster_zbuffer_launch(const double* table, const int64_t* first, int64_t n_faces, int64_t total_pairs,
                                   int64_t width, int64_t n_pixels, long long* keys, void* stream);
const char* dreamkit_raster_error_string(int code);

// keys [n_pixels] int64 (filled with INT64_MAX by the caller) is updated in place with the packed depth|face keys.
void zbuffer(torch::Tensor keys, torch::Tensor table, torch::Tensor first, int64_t total_pairs, int64_t width,
             int64_t stream) {
  TORCH_CHECK(keys.is_cuda() && table.is_cuda() && first.is_cuda(), "zbuffer: all tensors must be on a CUDA device");
  TORCH_CHECK(keys.device() == table.device() && keys.device() == first.device(),
              "zbuffer: tensors on different devices");
  TORCH_CHECK(keys.scalar_type() == torch::kInt64 && keys.dim() == 1 && keys.is_contiguous(),
              "zbuffer: keys must be a contiguous 1-D int64 tensor");
  TORCH_CHECK(table.scalar_type() == torch::kFloat64 && table.dim() == 2 && table.size(0) == 16 &&
                  table.is_contiguous(),
              "zbuffer: table must be a contiguous [16, N] float64 tensor");
  TORCH_CHECK(first.scalar_type() == torch::kInt64 && first.dim() == 1 && first.is_contiguous() &&
                  first.size(0) == table.size(1),
              "zbuffer: first must be a contiguous [N] int64 tensor");
  TORCH_CHECK(total_pairs >= 0 && width > 0, "zbuffer: bad total_pairs or width");
  const int code = dreamkit_raster_zbuffer_launch(
      table.data_ptr<double>(), first.data_ptr<int64_t>(), table.size(1), total_pairs, width, keys.numel(),
      reinterpret_cast<long long*>(keys.data_ptr<int64_t>()), reinterpret_cast<void*>(stream));
  TORCH_CHECK(code == 0, "zbuffer: CUDA kernel launch failed: ", dreamkit_raster_error_string(code));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("zbuffer", &zbuffer, "dreamkit z-buffer pass (packed depth|face keys, atomicMin)", py::arg("keys"),
        py::arg("table"), py::arg("first"), py::arg("total_pairs"), py::arg("width"), py::arg("stream"));
}
