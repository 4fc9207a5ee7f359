// Every schema of the effgen op library, one line of comment each. Kernels live in
// csrc/ops/<family>.cpp (CPU) and csrc/ops/<family>_cuda.cpp (CUDA); their reference
// definitions are in effgen_kernels/reference.py.
#include <Python.h>
#include <torch/library.h>

#include <stdexcept>

#include "kernels/cpu/binary_gemm.h"
#include "kernels/cpu/isa.h"

namespace {

std::string cpu_isa() { return effgen::cpu::isa_name(effgen::cpu::active_isa()); }

int64_t cpu_lut_width(std::optional<int64_t> group_size) {
  const auto& kernels = effgen::cpu::binary_gemm_kernels();
  return (group_size.has_value() ? kernels.alpha_layout : kernels.lut_layout).width;
}

std::vector<std::string> supported_cpu_isas() { return effgen::cpu::supported_isa_names(); }

void set_cpu_isa(const std::string& name) {
  try {
    effgen::cpu::set_active_isa(effgen::cpu::isa_from_name(name));
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, "set_cpu_isa: ", e.what());
  }
}

bool built_with_cuda() {
#ifdef EFFGEN_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY(effgen, m) {
  // --- quant family -------------------------------------------------------------------
  // Symmetric int8 per row of the last dim: scale = absmax/127, q = rne(x/scale) in [-127, 127].
  m.def("quantize_per_token(Tensor x) -> (Tensor q, Tensor scale)");
  // Same per group of `group_size` consecutive elements of the last dim (last group may be short).
  m.def("quantize_per_group(Tensor x, int group_size) -> (Tensor q, Tensor scale)");
  // Symmetric int8 with one scale per index of dimension `axis` (absmax over all other dims).
  m.def("quantize_per_channel(Tensor w, int axis) -> (Tensor q, Tensor scale)");
  // q * scale, scale per tensor/token (no axis, no group), per channel (axis) or per group.
  m.def("dequantize(Tensor q, Tensor scale, int? axis=None, int? group_size=None, ScalarType out_dtype=float) -> Tensor");
  // Bit-exact twin of torch.fake_quantize_per_tensor_affine, returning the STE mask too.
  m.def("fake_quantize_per_tensor_cachemask(Tensor x, float scale, int zero_point, int quant_min, int quant_max) -> (Tensor y, Tensor mask)");
  // Bit-exact twin of torch.fake_quantize_per_channel_affine, returning the STE mask too.
  m.def("fake_quantize_per_channel_cachemask(Tensor x, Tensor scale, Tensor zero_point, int axis, int quant_min, int quant_max) -> (Tensor y, Tensor mask)");
  // Straight-through backward of the two ops above: grad * mask.
  m.def("fake_quantize_mask_grad(Tensor grad, Tensor mask) -> Tensor");
  // torch._fake_quantize_learnable_per_channel_affine: zero_point is float, rounded and clamped.
  m.def("fake_quantize_learnable_per_channel(Tensor x, Tensor scale, Tensor zero_point, int axis, int quant_min, int quant_max, float grad_factor=1.0) -> Tensor");
  // LSQ gradients of torch._fake_quantize_learnable_per_channel_affine: (dx, dscale, dzero_point).
  m.def("fake_quantize_learnable_per_channel_backward(Tensor dy, Tensor x, Tensor scale, Tensor zero_point, int axis, int quant_min, int quant_max, float grad_factor) -> (Tensor dx, Tensor dscale, Tensor dzero_point)");

  // --- int8_gemm family ---------------------------------------------------------------
  // W8A8: out = (int32(xq @ wq^T) * x_scale[m]) * w_scale[n] + bias[n]; xq [..., K], wq [N, K].
  m.def("int8_linear(Tensor xq, Tensor x_scale, Tensor wq, Tensor w_scale, Tensor? bias=None, ScalarType out_dtype=float) -> Tensor");
  // W8A8 with per-token dynamic activation quantization fused in; output in x's dtype. With
  // smoothing (fp32 [K], SmoothQuant), x * smoothing is what is quantized (fp32 product).
  m.def("int8_dynamic_linear(Tensor x, Tensor wq, Tensor w_scale, Tensor? bias=None, Tensor? smoothing=None) -> Tensor");
  // int8_linear with weights packed by int8_pack_weight (CPU; layout below).
  m.def("int8_linear_packed(Tensor xq, Tensor x_scale, Tensor w_packed, Tensor w_sum, Tensor w_scale, Tensor? bias=None, ScalarType out_dtype=float) -> Tensor");
  // int8_dynamic_linear with weights packed by int8_pack_weight (CPU): w_packed int8
  // [ceil(N/16), ceil(K/4), 64] of 16 channels x 4 values of K per block, w_sum int32 [N].
  m.def("int8_dynamic_linear_packed(Tensor x, Tensor w_packed, Tensor w_sum, Tensor w_scale, Tensor? bias=None, Tensor? smoothing=None) -> Tensor");
  // int8 wq [N, K] -> (w_packed, w_sum) for the *_packed ops (CPU): the blocks above, zero
  // past N and K, and wq's sums, int32 [N], or [groups, N] per group of K with a group_size.
  m.def("int8_pack_weight(Tensor wq, int? group_size=None) -> (Tensor w_packed, Tensor w_sum)");
  // The canonical int8 [N, K] weights of int8_pack_weight's layout (a new tensor; any device).
  m.def("int8_unpack_weight(Tensor w_packed, int n, int k) -> Tensor");
  // W8A16: x @ (wq * w_scale)^T + bias, per-channel or per-group scales, fp32 accumulation.
  m.def("int8_weight_only_linear(Tensor x, Tensor wq, Tensor w_scale, Tensor? bias=None, int? group_size=None) -> Tensor");
  // W8A16 with per-channel scales from int8_pack_weight's layout (CPU): the activations as
  // fixed point per token (15 bits for bf16/fp16, 22 for fp32) on the int8 GEMM.
  m.def("int8_weight_only_linear_packed(Tensor x, Tensor w_packed, Tensor w_sum, Tensor w_scale, Tensor? bias=None, int? group_size=None) -> Tensor");

  // --- binary_gemm family: bit k of a row is bit k % 8 of byte k / 8 (LSB first) --------
  // Sign bits of w [N, K] (>= 0 is 1) as uint8 [N, ceil(K/8)].
  m.def("pack_binary(Tensor w) -> Tensor");
  // uint8 [N, ceil(K/8)] -> int8 [N, K] of +-1.
  m.def("unpack_binary(Tensor packed, int k) -> Tensor");
  // int8 [N, K] in {-1, 0, 1} -> uint8 [N, 2 * ceil(K/8)]: positive plane, then negative plane.
  m.def("pack_ternary(Tensor q) -> Tensor");
  // uint8 [N, 2 * ceil(K/8)] -> int8 [N, K] in {-1, 0, 1}.
  m.def("unpack_ternary(Tensor packed, int k) -> Tensor");
  // Float w [N, K] -> (pack_binary(w), alpha): alpha = mean |w| per row [N] or per group of
  // the row [N, groups], summed in double and rounded once to fp32. NaN / Inf is an error.
  m.def("binarize_weight(Tensor w, int? group_size=None) -> (Tensor packed, Tensor alpha)");
  // Float w [N, K] -> (pack_ternary(q), s): BitNet b1.58, s = mean |w| per row [N] or of the
  // whole tensor [1] (as binarize_weight's), q = round(clamp(w / s, -1, 1)), 0 where s is 0.
  m.def("ternarize_weight(Tensor w, bool per_channel=True) -> (Tensor packed, Tensor scale)");
  // x [..., K] @ (alpha * sign)^T + bias; alpha [N] or [N, groups] with group_size.
  // lut: optional lut_tiles(packed) for the lookup-table kernel at few rows (CPU).
  m.def("binary_linear(Tensor x, Tensor packed, Tensor alpha, Tensor? bias=None, int? group_size=None, Tensor? lut=None) -> Tensor");
  // x [..., K] @ (scale * q)^T + bias for ternary q; scale [N] or one element.
  m.def("ternary_linear(Tensor x, Tensor packed, Tensor scale, Tensor? bias=None, Tensor? lut=None) -> Tensor");
  // The packed rows re-tiled for the CPU lookup-table kernel: 16 rows x 4 inputs per 8 bytes and plane;
  // with group_size (binary only), in the layout that kernel reads with per-group alphas.
  m.def("lut_tiles(Tensor packed, int k, int planes, int? group_size=None) -> Tensor");
  // XNOR-Net: x binarized per token (sign, mean |x|) against binary weights, via popcount.
  m.def("xnor_linear(Tensor x, Tensor packed, Tensor alpha, Tensor? bias=None) -> Tensor");

  // --- compress family: error-feedback codecs over blocks of block_size values ----------
  // v = x + error; int8 per block (scale absmax/127); error <- v - decompress(q).
  m.def("ef_compress_int8(Tensor x, Tensor(a!) error, int block_size) -> (Tensor q, Tensor scales)");
  // v = x + error; bits v >= block mean (LSB first), levels (mean - spread, mean + spread)
  // per block (levels [2 * blocks]); error <- v - decompress.
  m.def("ef_compress_sign(Tensor x, Tensor(a!) error, int block_size) -> (Tensor packed, Tensor levels)");
  // fp32 sum over rows of dequantized int8 chunks: q [chunks, n], scales [chunks, blocks].
  m.def("decompress_sum_int8(Tensor q, Tensor scales, int block_size) -> Tensor");
  // fp32 sum over rows of sign chunks: packed [chunks, ceil(n/8)], levels [chunks, 2 * blocks].
  m.def("decompress_sum_sign(Tensor packed, Tensor levels, int n, int block_size) -> Tensor");
  // The same four into the caller's buffers. Encoders: q / packed [rows, values a row (/ 8)]
  // and scales [rows, blocks a row] (levels: 2 x blocks) hold x's values row after row (several rows: whole blocks
  // and bytes a row); rows of every buffer may be strided (views into message buffers).
  // estimate (EF21, error = minus the worker's estimate): error <- (v - decompress) - x.
  // accumulate: total <- total + the sum.
  m.def("ef_compress_int8_out(Tensor x, Tensor(a!) error, int block_size, Tensor(b!) q, Tensor(c!) scales, "
        "bool estimate=False) -> ()");
  m.def("ef_compress_sign_out(Tensor x, Tensor(a!) error, int block_size, Tensor(b!) packed, Tensor(c!) levels, "
        "bool estimate=False) -> ()");
  m.def("decompress_sum_int8_out(Tensor q, Tensor scales, int block_size, Tensor(a!) total, "
        "bool accumulate=False) -> ()");
  m.def("decompress_sum_sign_out(Tensor packed, Tensor levels, int n, int block_size, Tensor(a!) total, "
        "bool accumulate=False) -> ()");

  // --- build and CPU dispatch introspection --------------------------------------------
  // The CPU ISA the kernels dispatch on now.
  m.def("cpu_isa() -> str", &cpu_isa);
  // Inputs per lookup in the layout lut_tiles makes on that ISA (with or without group_size):
  // 4 (uint8) or 3 (int32).
  m.def("cpu_lut_width(int? group_size=None) -> int", &cpu_lut_width);
  // Every ISA this CPU can run, lowest first.
  m.def("supported_cpu_isas() -> str[]", &supported_cpu_isas);
  // Switch the dispatched ISA (tests and benchmarks run every path in one process).
  m.def("set_cpu_isa(str isa) -> ()", &set_cpu_isa);
  // Whether this build of the extension contains the CUDA kernels.
  m.def("built_with_cuda() -> bool", &built_with_cuda);
}

// `import effgen_kernels._C` loads this library, which runs the registrations above. The
// module itself is empty: every entry point is a torch op.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
