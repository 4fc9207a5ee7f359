// The scalar SIMD abstraction `S` used by the kernel templates (see quant_impl.h for the
// interface). Include it only inside an ISA-specific anonymous namespace, after that ISA's
// target pragma, so that every function here is compiled for that target alone.
// (No include guard on purpose: each ISA translation unit includes it once.)

struct S {
  static constexpr int kWidth = 1;
  using F = float;
  using I = uint32_t;
  using B = bool;

  static F load(const float* p) { return *p; }
  static F load(const bf16* p) { return to_f32(*p); }
  static F load(const fp16* p) { return to_f32(*p); }
  static F load(const int8_t* p) { return static_cast<float>(*p); }
  static F load_i32(const int32_t* p) { return static_cast<float>(*p); }  // round to nearest even

  static void store(float* p, F v) { *p = v; }
  static void store(bf16* p, F v) { *p = from_f32<bf16>(v); }
  static void store(fp16* p, F v) { *p = from_f32<fp16>(v); }
  // Callers pass integral values in [-128, 127] (saturated first): the conversion is exact.
  static void store(int8_t* p, F v) { *p = static_cast<int8_t>(v); }
  // 4 values that round into [-127, 127], rounded half to even (others, NaN included, are
  // saturated first as the vector ISAs' conversions and packs do, not converted out of range).
  static void store_rounded(int8_t* p, const F (&v)[4]) {
    for (int j = 0; j < 4; ++j) p[j] = static_cast<int8_t>(std::fmin(std::fmax(round_even(v[j]), -128.0f), 127.0f));
  }

  static float hsum(F v) { return v; }
  static F set1(float v) { return v; }
  static F mul(F a, F b) { return a * b; }
  static F fmadd(F a, F b, F c) { return std::fma(a, b, c); }  // one rounding (W8A16 only)
  static F add(F a, F b) { return a + b; }
  static F sub(F a, F b) { return a - b; }
  static F min(F a, F b) { return b < a ? b : a; }
  static F max(F a, F b) { return a < b ? b : a; }
  static F round_even(F v) { return std::nearbyint(v); }  // default rounding mode: half to even
  static F floor(F v) { return std::floor(v); }

  static I zero_bits() { return 0; }
  static I abs_bits(F v) { return f32_bits(v) & 0x7FFFFFFFu; }
  static I max_bits(I a, I b) { return a < b ? b : a; }
  static uint32_t hmax_bits(I v) { return v; }
  static I load_bits(const uint32_t* p) { return *p; }
  static void store_bits(uint32_t* p, I v) { *p = v; }

  static B ge(F a, F b) { return a >= b; }
  static B le(F a, F b) { return a <= b; }
  static B land(B a, B b) { return a && b; }
  static void store_bool(bool* p, B v) { *p = v; }
  static uint32_t mask_bits(B v) { return v; }  // lane k -> bit k
  static B mask_from_bits(uint32_t bits) { return bits & 1u; }  // bit 0 -> the lane
  static F select(B m, F a, F b) { return m ? a : b; }
};
