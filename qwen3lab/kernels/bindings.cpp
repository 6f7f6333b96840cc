// Python bindings of the CPU kernels (cpu_gemv.cpp, cpu_norm_rope.cpp, cpu_attention.cpp).
#include <torch/extension.h>

at::Tensor gemv_bf16(const at::Tensor& x, const at::Tensor& w);
at::Tensor gemv_int8(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale);
at::Tensor gemv_int4(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales, const at::Tensor& zeros,
                     int64_t group_size);
at::Tensor dequant_int8(const at::Tensor& w, const at::Tensor& scale, const c10::optional<at::Tensor>& out);
at::Tensor dequant_int4(const at::Tensor& w, const at::Tensor& scales, const at::Tensor& zeros, int64_t group_size,
                        const c10::optional<at::Tensor>& out);
bool amx_available();
at::Tensor amx_bf16(const at::Tensor& x, const at::Tensor& w);
at::Tensor amx_int8(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale);
at::Tensor amx_int4(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales, const at::Tensor& zeros,
                    int64_t group_size);
at::Tensor amx_pack_int4(const at::Tensor& w, int64_t group_size);
at::Tensor amx_unpack_int4(const at::Tensor& w, int64_t group_size, const c10::optional<at::Tensor>& out);
at::Tensor amx_group_vectors(const at::Tensor& v);
at::Tensor amx_dequant_int4(const at::Tensor& w, const at::Tensor& scales, const at::Tensor& zeros, int64_t group_size,
                            const c10::optional<at::Tensor>& out);
at::Tensor silu_mul_bf16(const at::Tensor& gate_up);
at::Tensor rms_norm_bf16(const at::Tensor& x, const at::Tensor& w, double eps);
at::Tensor norm_rope_bf16(const at::Tensor& x, const c10::optional<at::Tensor>& w, const at::Tensor& cos,
                          const at::Tensor& sin, double eps);
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& k_scale, const at::Tensor& v_scale, const at::Tensor& slots,
                                  const at::Tensor& ctx, const at::Tensor& start_pos, int64_t sinks, double scale);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gemv_bf16", &gemv_bf16, "y = x @ w.T for few rows (bf16)");
  m.def("gemv_int8", &gemv_int8, "y = x @ (w * scale).T for few rows (int8 weights, int8 activations per 32)");
  m.def("gemv_int4", &gemv_int4, "y = x @ dequant(w).T for few rows (int4 nibbles, bf16 scales/zeros per group)");
  m.def("dequant_int8", &dequant_int8, "bf16 weight from int8 values and fp32 row scales",
        py::arg("w"), py::arg("scale"), py::arg("out") = py::none());
  m.def("dequant_int4", &dequant_int4, "bf16 weight from int4 nibbles and bf16 scales/zeros [N, K / group]",
        py::arg("w"), py::arg("scales"), py::arg("zeros"), py::arg("group_size"), py::arg("out") = py::none());
  m.def("amx_available", &amx_available, "whether the OS granted this process AMX tile state");
  m.def("amx_bf16", &amx_bf16, "y = x @ w.T on AMX tiles (bf16), up to 16 rows per pass, rows batch-invariant");
  m.def("amx_int8", &amx_int8, "y = x @ (w * scale).T on AMX tiles, up to 16 rows per pass (int8 activations per 64)");
  m.def("amx_int4", &amx_int4, "y = x @ dequant(w).T on AMX tiles (w from amx_pack_int4, scales/zeros from amx_group_vectors)");
  m.def("amx_pack_int4", &amx_pack_int4, "portable int4 nibbles [N, K / 2] -> the AMX kernel's layout");
  m.def("amx_unpack_int4", &amx_unpack_int4, "the AMX kernel's int4 layout -> portable nibbles",
        py::arg("w"), py::arg("group_size"), py::arg("out") = py::none());
  m.def("amx_dequant_int4", &amx_dequant_int4, "bf16 weight from the AMX int4 layout (prefill)",
        py::arg("w"), py::arg("scales"), py::arg("zeros"), py::arg("group_size"), py::arg("out") = py::none());
  m.def("amx_group_vectors", &amx_group_vectors, "scales or zeros [G, N] -> bf16 [N / 16, G, 16]");
  m.def("silu_mul_bf16", &silu_mul_bf16, "silu(gate) * up from gate_up [N, 2I] (bf16, reference roundings)");
  m.def("rms_norm_bf16", &rms_norm_bf16, "RMSNorm over the last dim, reference roundings (bf16)");
  m.def("paged_decode_attention", &paged_decode_attention, "one-token-per-sequence attention over the paged cache (bf16, or int8 with scales)");
  m.def("norm_rope_bf16", &norm_rope_bf16, "per-head RMSNorm (optional) then rotary embedding (bf16)");
}
