// The avx2 SIMD abstraction `S` used by the kernel templates (see quant_impl.h for the
// interface). Include it only inside an ISA-specific anonymous namespace, after that ISA's
// target pragma, so that every function here is compiled for that target alone.
// (No include guard on purpose: each ISA translation unit includes it once.)

struct S {
  static constexpr int kWidth = 8;
  using F = __m256;
  using I = __m256i;
  using B = __m256;

  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F load(const bf16* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static F load(const fp16* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static F load(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }

  static F load_i32(const int32_t* p) {  // round to nearest even
    return _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }

  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  // fp32 -> bf16 round half to even; NaN -> 0x7FC0 like c10::BFloat16.
  static void store(bf16* p, F v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
    const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), is_nan);
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
  }
  static void store(fp16* p, F v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  // Callers pass integral values in [-128, 127] (saturated first).
  static void store(int8_t* p, F v) {
    const __m256i i32 = _mm256_cvttps_epi32(v);
    const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packs_epi16(i16, i16));
  }
  // 4 vectors of values that round into [-127, 127] rounded half to even to 32 bytes (NaN
  // converts to INT_MIN and packs to -128): the packs work
  // per 128-bit lane, so the dwords come out lane-interleaved and one permute orders them.
  static void store_rounded(int8_t* p, const F (&v)[4]) {
    auto dwords = [&](int j) { return _mm256_cvttps_epi32(round_even(v[j])); };
    const __m256i words_01 = _mm256_packs_epi32(dwords(0), dwords(1)), words_23 = _mm256_packs_epi32(dwords(2), dwords(3));
    const __m256i bytes = _mm256_packs_epi16(words_01, words_23);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  }
  static uint32_t mask_bits(B v) { return static_cast<uint32_t>(_mm256_movemask_ps(v)); }  // lane k -> bit k
  static B mask_from_bits(uint32_t bits) {  // bit k -> lane k (all ones or zero)
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i set = _mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), lane_bit);
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(set, lane_bit));
  }
  static F select(B m, F a, F b) { return _mm256_blendv_ps(b, a, m); }

  static float hsum(F v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }  // one rounding (W8A16 only)
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  // min/max return the second operand when either is NaN; callers never rely on NaN order.
  static F min(F a, F b) { return _mm256_min_ps(a, b); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F round_even(F v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static F floor(F v) { return _mm256_floor_ps(v); }

  static I zero_bits() { return _mm256_setzero_si256(); }
  static I abs_bits(F v) { return _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7FFFFFFF)); }
  static I max_bits(I a, I b) { return _mm256_max_epu32(a, b); }
  static uint32_t hmax_bits(I v) {
    __m128i m = _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    m = _mm_max_epu32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(1, 0, 3, 2)));
    m = _mm_max_epu32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(2, 3, 0, 1)));
    return static_cast<uint32_t>(_mm_cvtsi128_si32(m));
  }
  static I load_bits(const uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static void store_bits(uint32_t* p, I v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }

  static B ge(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  static B le(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
  static B land(B a, B b) { return _mm256_and_ps(a, b); }
  static void store_bool(bool* p, B v) {
    // All-ones lanes -> 1, zero lanes -> 0, packed to one byte per lane.
    const __m256i ones = _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(1));
    const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(ones), _mm256_extracti128_si256(ones, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packs_epi16(i16, i16));
  }
};
