// The NEON (aarch64 Advanced SIMD) abstraction `S` used by the kernel templates (see
// quant_impl.h for the interface): 4 fp32 lanes. Include it only inside an ISA-specific
// anonymous namespace, after that ISA's target pragma and <arm_neon.h>.
// (No include guard on purpose: each ISA translation unit includes it once.)
// Every operation gives the bits the x86 ones give (the tests compare the ISAs bit for
// bit), which is why min / max are written out: FMIN / FMAX order -0 below +0 and return
// NaN, where x86's return the second operand.

struct S {
  static constexpr int kWidth = 4;
  using F = float32x4_t;
  using I = uint32x4_t;
  using B = uint32x4_t;  // all ones or zero per lane

  static F load(const float* p) { return vld1q_f32(p); }
  static F load(const bf16* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(halves(p)), 16)); }
  static F load(const fp16* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(halves(p)))); }
  static F load(const int8_t* p) {  // exactly 4 bytes: they may be a run's last
    int32_t bytes;
    std::memcpy(&bytes, p, sizeof(bytes));
    return vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(bytes))))));
  }

  static F load_i32(const int32_t* p) { return vcvtq_f32_s32(vld1q_s32(p)); }  // round to nearest even

  static void store(float* p, F v) { vst1q_f32(p, v); }
  // fp32 -> bf16 round half to even; NaN -> 0x7FC0 like c10::BFloat16.
  static void store(bf16* p, F v) {
    const uint32x4_t u = vreinterpretq_u32_f32(v);
    const uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
    const uint32x4_t rounded = vshrq_n_u32(vaddq_u32(vaddq_u32(u, vdupq_n_u32(0x7FFF)), lsb), 16);
    vst1_u16(halves(p), vmovn_u32(vbslq_u32(vceqq_f32(v, v), rounded, vdupq_n_u32(0x7FC0))));
  }
  static void store(fp16* p, F v) { vst1_u16(halves(p), vreinterpret_u16_f16(vcvt_f16_f32(v))); }  // FPCR: nearest even
  // Callers pass integral values in [-128, 127] (saturated first).
  static void store(int8_t* p, F v) {
    const int16x4_t words = vqmovn_s32(vcvtq_s32_f32(v));
    const int32_t bytes = vget_lane_s32(vreinterpret_s32_s8(vqmovn_s16(vcombine_s16(words, words))), 0);
    std::memcpy(p, &bytes, sizeof(bytes));
  }
  // 4 vectors of values that round into [-127, 127] rounded half to even (FCVTNS; NaN
  // converts to 0) to 16 bytes through saturating narrows.
  static void store_rounded(int8_t* p, const F (&v)[4]) {
    auto words = [&](int j) { return vcombine_s16(vqmovn_s32(vcvtnq_s32_f32(v[j])), vqmovn_s32(vcvtnq_s32_f32(v[j + 1]))); };
    vst1q_s8(p, vcombine_s8(vqmovn_s16(words(0)), vqmovn_s16(words(2))));
  }
  static uint32_t mask_bits(B v) { return vaddvq_u32(vandq_u32(v, lane_bits())); }  // lane k -> bit k
  static B mask_from_bits(uint32_t bits) { return vtstq_u32(vdupq_n_u32(bits), lane_bits()); }  // bit k -> lane k
  static F select(B m, F a, F b) { return vbslq_f32(m, a, b); }

  static float hsum(F v) { return vaddvq_f32(v); }
  static F set1(float v) { return vdupq_n_f32(v); }
  static F mul(F a, F b) { return vmulq_f32(a, b); }
  static F fmadd(F a, F b, F c) { return vfmaq_f32(c, a, b); }  // one rounding (W8A16 only)
  static F add(F a, F b) { return vaddq_f32(a, b); }
  static F sub(F a, F b) { return vsubq_f32(a, b); }
  // As x86's: a < b ? a : b (the second operand when either is NaN or both are zeros).
  static F min(F a, F b) { return vbslq_f32(vcltq_f32(a, b), a, b); }
  static F max(F a, F b) { return vbslq_f32(vcgtq_f32(a, b), a, b); }
  static F round_even(F v) { return vrndnq_f32(v); }
  static F floor(F v) { return vrndmq_f32(v); }

  static I zero_bits() { return vdupq_n_u32(0); }
  static I abs_bits(F v) { return vandq_u32(vreinterpretq_u32_f32(v), vdupq_n_u32(0x7FFFFFFF)); }
  static I max_bits(I a, I b) { return vmaxq_u32(a, b); }
  static uint32_t hmax_bits(I v) { return vmaxvq_u32(v); }
  static I load_bits(const uint32_t* p) { return vld1q_u32(p); }
  static void store_bits(uint32_t* p, I v) { vst1q_u32(p, v); }

  static B ge(F a, F b) { return vcgeq_f32(a, b); }  // ordered: false where either is NaN
  static B le(F a, F b) { return vcleq_f32(a, b); }
  static B land(B a, B b) { return vandq_u32(a, b); }
  static void store_bool(bool* p, B v) {
    const uint16x4_t words = vmovn_u32(vandq_u32(v, vdupq_n_u32(1)));
    const uint32_t bytes = vget_lane_u32(vreinterpret_u32_u8(vmovn_u16(vcombine_u16(words, words))), 0);
    std::memcpy(p, &bytes, sizeof(bytes));
  }

 private:
  template <typename T>
  static uint16_t* halves(T* p) {
    return reinterpret_cast<uint16_t*>(p);
  }
  template <typename T>
  static const uint16_t* halves(const T* p) {
    return reinterpret_cast<const uint16_t*>(p);
  }
  static uint32x4_t lane_bits() { return uint32x4_t{1, 2, 4, 8}; }
};
