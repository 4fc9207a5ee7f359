// Host-side check of compress.cu's sign encoders. The fused one (ef_sign_kernel, block % 8
// == 0): every lane's work (SignBlockLane) on every compression block, with the warp's sums
// emulated by the same xor butterfly the shuffles run, against the codec written out
// plainly (sequential double sums; the sums are exact for these inputs, so their order
// cannot show): levels, bits and residuals must match bit for bit, for fp32 and bf16
// inputs, aligned (vector loads) and not, with a short last block, and for blocks holding
// Inf / NaN. The packer of other block sizes (sign_pack_kernel, one thread a byte, bytes
// shared by two blocks): every byte against the same plain codec, given its means and
// levels. No GPU needed; built and run by tests/test_compress.py. Exits 1 with the first
// mismatch.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "../../csrc/kernels/cuda/compress.cu"

using namespace effgen::cuda;

namespace {

constexpr double kCap = 1.5;  // kSignScaleCap

// What warp_sum leaves in every lane, v[L] += v[L ^ offset] for offsets 16, 8, 4, 2, 1: the
// same bits in all 32 (a + b == b + a), which the kernel relies on (every lane packs with
// the levels it computed itself).
double butterfly_sum(double (&v)[32]) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    double next[32];
    for (int lane = 0; lane < 32; ++lane) next[lane] = v[lane] + v[lane ^ offset];
    std::memcpy(v, next, sizeof v);
  }
  for (int lane = 1; lane < 32; ++lane) {
    if (std::memcmp(&v[lane], &v[0], sizeof(double)) != 0) {
      std::printf("butterfly: lane %d holds another sum than lane 0\n", lane);
      std::exit(1);
    }
  }
  return v[0];
}

// The kernel's warp on block [start, end), lane by lane.
template <typename T>
void run_block(const T* x, float* error, int64_t start, int64_t end, bool vector, uint8_t* packed, float* levels,
               int64_t b) {
  double parts[32], magnitudes[32], squares[32];
  for (int lane = 0; lane < 32; ++lane) parts[lane] = SignBlockLane<T>{x, error, start, end, vector, lane}.sum();
  const double count = static_cast<double>(end - start), sum = butterfly_sum(parts);
  const float mean = sign_block_mean(sum, count);
  for (int lane = 0; lane < 32; ++lane) {
    SignBlockLane<T>{x, error, start, end, vector, lane}.spread_sums(mean, magnitudes[lane], squares[lane]);
  }
  const SignLevels block_levels =
      sign_levels(sum, mean, butterfly_sum(magnitudes), butterfly_sum(squares), count, kCap);
  levels[2 * b] = block_levels.low, levels[2 * b + 1] = block_levels.high;
  // every lane reads its values before any lane writes: lanes own disjoint values
  for (int lane = 0; lane < 32; ++lane) SignBlockLane<T>{x, error, start, end, vector, lane}.pack(block_levels, packed);
}

// The codec's outputs: packed bits, levels (low, high) per block, and each block's mean (0
// for a block holding Inf/NaN, whose levels are NaN).
struct Outputs {
  std::vector<uint8_t> packed;
  std::vector<float> levels, means;
};

// The codec written out plainly (compress.h), in place on v (= x + error on entry).
Outputs plain_codec(std::vector<float>& v, int64_t block) {
  const int64_t n = static_cast<int64_t>(v.size()), blocks = (n + block - 1) / block;
  Outputs out{std::vector<uint8_t>((n + 7) / 8, 0), std::vector<float>(2 * blocks), std::vector<float>(blocks, 0.0f)};
  for (int64_t start = 0, b = 0; start < n; start += block, ++b) {
    const int64_t end = std::min(n, start + block);
    double sum = 0.0;
    for (int64_t i = start; i < end; ++i) sum += v[i];
    if (!std::isfinite(sum)) {
      out.levels[2 * b] = out.levels[2 * b + 1] = quiet_nan();
      for (int64_t i = start; i < end; ++i) v[i] = 0.0f;
      continue;
    }
    const double count = static_cast<double>(end - start);
    const float mean = out.means[b] = static_cast<float>(sum / count);
    double magnitudes = 0.0, squares = 0.0;
    for (int64_t i = start; i < end; ++i) {
      const double d = v[i] - mean;
      magnitudes += std::fabs(d);
      squares += d * d;
    }
    const double rms = std::sqrt(squares / count), capped = kCap * (magnitudes / count);
    const float spread = static_cast<float>(rms < capped ? rms : capped), low = mean - spread, high = mean + spread;
    out.levels[2 * b] = low, out.levels[2 * b + 1] = high;
    for (int64_t i = start; i < end; ++i) {
      const bool above = v[i] >= mean;
      out.packed[i / 8] = static_cast<uint8_t>(out.packed[i / 8] | (static_cast<uint32_t>(above) << (i % 8)));
      v[i] -= above ? high : low;
    }
  }
  return out;
}

bool same_bits(const char* what, int64_t n, int64_t block, int64_t index, float got, float want) {
  uint32_t a, b;
  std::memcpy(&a, &got, 4);
  std::memcpy(&b, &want, 4);
  if (a == b) return true;
  std::printf("%s, n %lld, block %lld: [%lld] = %g, expected %g\n", what, (long long)n, (long long)block,
              (long long)index, got, want);
  return false;
}

bool same_outputs(int64_t n, int64_t block, const std::vector<float>& levels, const std::vector<uint8_t>& packed,
                  const float* error, const Outputs& want, const std::vector<float>& want_error) {
  for (size_t i = 0; i < levels.size(); ++i) {
    if (!same_bits("levels", n, block, i, levels[i], want.levels[i])) return false;
  }
  for (size_t i = 0; i < packed.size(); ++i) {
    if (packed[i] != want.packed[i]) {
      std::printf("bits, n %lld, block %lld: byte %lld = %u, expected %u\n", (long long)n, (long long)block,
                  (long long)i, packed[i], want.packed[i]);
      return false;
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    if (!same_bits("residual", n, block, i, error[i], want_error[i])) return false;
  }
  return true;
}

// One case's inputs: x and error of n values at 16-byte alignment + `shift` floats (so that
// both load paths run), normal values with Inf / NaN in x when `special`, and v = x + error.
template <typename T>
struct Inputs {
  std::vector<float4> x_storage, error_storage;
  T* x;
  float* error;
  std::vector<float> v;

  Inputs(int64_t n, int shift, bool special, std::mt19937& rng)
      : x_storage(n / 4 + 2), error_storage(n / 4 + 2), x(reinterpret_cast<T*>(x_storage.data()) + shift),
        error(reinterpret_cast<float*>(error_storage.data()) + shift), v(n) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int64_t i = 0; i < n; ++i) {
      x[i] = effgen::cuda::from_f32<T>(normal(rng));
      error[i] = 0.01f * normal(rng);
    }
    if (special) x[0] = effgen::cuda::from_f32<T>(INFINITY), x[n / 2] = effgen::cuda::from_f32<T>(NAN);
    for (int64_t i = 0; i < n; ++i) v[i] = error[i] + to_f32(x[i]);
  }
};

template <typename T>
bool check_fused(int64_t n, int64_t block, bool special, std::mt19937& rng) {
  for (const int shift : {0, 1}) {
    Inputs<T> in(n, shift, special, rng);
    const Outputs want = plain_codec(in.v, block);  // in.v: the expected residuals now
    std::vector<uint8_t> packed(want.packed.size(), 0xA5);
    std::vector<float> levels(want.levels.size());
    const bool vector = aligned(in.x, 16) && aligned(in.error, 16);
    for (int64_t b = 0; b < static_cast<int64_t>(want.means.size()); ++b) {
      run_block(in.x, in.error, b * block, std::min(n, (b + 1) * block), vector, packed.data(), levels.data(), b);
    }
    if (!same_outputs(n, block, levels, packed, in.error, want, in.v)) return false;
  }
  return true;
}

// sign_pack_byte over every byte, in place on v (the glue forms v in the error buffer),
// given the plain codec's means and levels.
bool check_packer(int64_t n, int64_t block, bool special, std::mt19937& rng) {
  for (const int shift : {0, 1}) {
    Inputs<float> in(n, shift, special, rng);
    std::copy(in.v.begin(), in.v.end(), in.error);
    const Outputs want = plain_codec(in.v, block);
    std::vector<uint8_t> packed(want.packed.size(), 0xA5);
    for (int64_t byte = 0; byte < (n + 7) / 8; ++byte) {
      sign_pack_byte(in.error, want.means.data(), want.levels.data(), n, block, aligned(in.error, 16), byte,
                     packed.data(), in.error);
    }
    if (!same_outputs(n, block, want.levels, packed, in.error, want, in.v)) return false;
  }
  return true;
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  const int64_t fused_shapes[][2] = {{1, 8}, {4099, 256}, {70001, 64}, {4096, 512}, {5000, 520}, {1000, 8},
                                     {300, 1024}};
  const int64_t packer_shapes[][2] = {{1, 3}, {1003, 7}, {4099, 100}, {1200, 12}, {5000, 500}, {77, 1}};
  for (const bool special : {false, true}) {
    for (const auto& shape : fused_shapes) {
      if (!check_fused<float>(shape[0], shape[1], special, rng)) return 1;
      if (!check_fused<__nv_bfloat16>(shape[0], shape[1], special, rng)) return 1;
    }
    for (const auto& shape : packer_shapes) {
      if (!check_packer(shape[0], shape[1], special, rng)) return 1;
    }
  }
  std::printf("ok\n");
  return 0;
}
