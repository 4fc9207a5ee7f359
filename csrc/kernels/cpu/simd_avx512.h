// The avx512 SIMD abstraction `S` used by the kernel templates (see quant_impl.h for the
// interface). Include it only inside an ISA-specific anonymous namespace, after that ISA's
// target pragma, so that every function here is compiled for that target alone.
// (No include guard on purpose: each ISA translation unit includes it once.)

struct S {
  static constexpr int kWidth = 16;
  using F = __m512;
  using I = __m512i;
  using B = __mmask16;

  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F load(const bf16* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  static F load(const fp16* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static F load(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }

  static F load_i32(const int32_t* p) { return _mm512_cvtepi32_ps(_mm512_loadu_si512(p)); }  // round to nearest even

  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  // fp32 -> bf16 round half to even; NaN -> 0x7FC0 like c10::BFloat16.
  static void store(bf16* p, F v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
  }
  static void store(fp16* p, F v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  // Callers pass integral values in [-128, 127] (saturated first).
  static void store(int8_t* p, F v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(v)));
  }

  // 4 vectors of values that round into [-127, 127] rounded half to even (whatever MXCSR
  // says; NaN converts to INT_MIN and packs to -128) to 64 bytes: saturating packs (2 words
  // per dword pair, then bytes) interleave the vectors' 128-bit lanes, and one dword permute
  // puts them back in order. A vpmovsdb per vector costs 2 shuffle uops, this 1 on average.
  static void store_rounded(int8_t* p, const F (&v)[4]) {
    auto dwords = [&](int j) { return _mm512_cvt_roundps_epi32(v[j], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); };
    const __m512i words_01 = _mm512_packs_epi32(dwords(0), dwords(1)), words_23 = _mm512_packs_epi32(dwords(2), dwords(3));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_storeu_si512(p, _mm512_permutexvar_epi32(order, _mm512_packs_epi16(words_01, words_23)));
  }

  static float hsum(F v) { return _mm512_reduce_add_ps(v); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }  // one rounding (W8A16 only)
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  // min/max return the second operand when either is NaN; callers never rely on NaN order.
  static F min(F a, F b) { return _mm512_min_ps(a, b); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F round_even(F v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static F floor(F v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }

  static I zero_bits() { return _mm512_setzero_si512(); }
  static I abs_bits(F v) { return _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7FFFFFFF)); }
  static I max_bits(I a, I b) { return _mm512_max_epu32(a, b); }
  static uint32_t hmax_bits(I v) { return _mm512_reduce_max_epu32(v); }
  static I load_bits(const uint32_t* p) { return _mm512_loadu_si512(p); }
  static void store_bits(uint32_t* p, I v) { _mm512_storeu_si512(p, v); }

  static B ge(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  static B le(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
  static B land(B a, B b) { return static_cast<B>(a & b); }
  static void store_bool(bool* p, B v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm_maskz_set1_epi8(v, 1));
  }
  static uint32_t mask_bits(B v) { return v; }  // lane k -> bit k
  static B mask_from_bits(uint32_t bits) { return static_cast<B>(bits); }  // bit k -> lane k
  static F select(B m, F a, F b) { return _mm512_mask_blend_ps(m, b, a); }
};
