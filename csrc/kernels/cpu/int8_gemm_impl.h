// The ISA-independent parts of the int8 GEMM, included by each int8_gemm_<isa>.cpp after
// it has defined its SIMD abstraction `S`, its register tile
//   template <int MR, int NR> void tile(const int8_t* a, int64_t lda, const int8_t* b,
//       int64_t ldb, int64_t k, const int32_t* strip_info, int32_t* c, int64_t ldc);
// with constants kTileM, kTileN (the largest MR, NR), kDecodeN (NR for a single row: more
// weight rows in flight when the product is a pure weight stream), and
//   const int32_t* prepare_panel(const int8_t* b, int64_t ldb, int64_t nr, int64_t k,
//                                int32_t* scratch);
// which may precompute one int32 per weight row of a panel once for all its row tiles
// (VNNI: the sign-shift correction) and return it, or return nullptr to let tiles do
// without. Tiles of one row band sweep the panel, so the activation rows stay in L1 while
// the panel's weights come from L2; ragged edges go to smaller instantiations.
// For packed weights, the register tile
//   template <int MR, int NG> void packed_tile(const int8_t* a, int64_t lda, int64_t k,
//       const int8_t* b, int64_t group_stride, const int32_t* col_sums, int64_t n_valid,
//       int32_t* c, int64_t ldc, PrefetchRange prefetch);
// covers MR rows by NG column groups of kPackCols (group g's blocks start at
// b + g * group_stride), stores the first n_valid columns and may prefetch `prefetch`
// along the way (LinePrefetcher, int8_gemm_quads.h); kPackedTileM and
// kPackedTileGroups are the largest MR and NG. kGemmPackedI16 and kW8A16PackedGroupedI16
// are the ISA's Int8GemmKernels::gemm_packed_i16 and w8a16_packed_grouped_i16 (or nullptr);
// kGemmPacked its own gemm_packed, or nullptr for the one below; kGemmPackedScaled its
// gemm_packed_scaled, or nullptr.

#include "simd_rows.h"

// f.template operator()<mr, nr>() for runtime mr <= MR, nr <= NR (compile-time sizes keep
// accumulators in registers).
template <int MR, int NR, int kMaxN = NR, typename F>
void for_tile_edge(int64_t mr, int64_t nr, F&& f) {
  if (mr == MR) {
    if (nr == NR) return f.template operator()<MR, NR>();
    if constexpr (NR > 1) return for_tile_edge<MR, NR - 1, kMaxN>(mr, nr, f);
  } else if constexpr (MR > 1) {
    return for_tile_edge<MR - 1, kMaxN, kMaxN>(mr, nr, f);
  }
}

using TileFn = void (*)(const int8_t*, int64_t, const int8_t*, int64_t, int64_t, const int32_t*, int32_t*, int64_t);

// The tile<mr, nr> instantiation for a ragged edge (compile-time sizes keep the
// accumulators in registers). Plain recursion: no std:: templates in ISA code.
template <int MR, int NR = kTileN>
TileFn pick_nr(int64_t nr) {
  if constexpr (NR == 1) {
    return &tile<MR, 1>;
  } else {
    return nr == NR ? &tile<MR, NR> : pick_nr<MR, NR - 1>(nr);
  }
}

template <int MR = kTileM>
TileFn pick_tile(int64_t mr, int64_t nr) {
  if constexpr (MR == 1) {
    return pick_nr<1>(nr);
  } else {
    return mr == MR ? pick_nr<MR>(nr) : pick_tile<MR - 1>(mr, nr);
  }
}

void gemm_s8s8s32(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t m, int64_t n, int64_t k,
                  int32_t* c, int64_t ldc) {
  if (m == 1) {
    for (int64_t j = 0; j < n; j += kDecodeN) {
      const int64_t nr = n - j < kDecodeN ? n - j : kDecodeN;
      pick_nr<1, kDecodeN>(nr)(a, lda, b + j * ldb, ldb, k, nullptr, c + j, ldc);
    }
    return;
  }
  constexpr int64_t kPanel = 64;  // weight rows per panel
  int32_t scratch[kPanel];
  for (int64_t p = 0; p < n; p += kPanel) {
    const int64_t np = n - p < kPanel ? n - p : kPanel;
    // With a single row tile every weight row is read once anyway: nothing to precompute.
    const int32_t* panel_info = m > kTileM ? prepare_panel(b + p * ldb, ldb, np, k, scratch) : nullptr;
    for (int64_t i = 0; i < m; i += kTileM) {
      const int64_t mr = m - i < kTileM ? m - i : kTileM;
      for (int64_t j = p; j < p + np; j += kTileN) {
        const int64_t nr = p + np - j < kTileN ? p + np - j : kTileN;
        pick_tile(mr, nr)(a + i * lda, lda, b + j * ldb, ldb, k, panel_info == nullptr ? nullptr : panel_info + (j - p),
                          c + i * ldc + j, ldc);
      }
    }
  }
}

// f.template operator()<MR, NG>(i, j, nc, prefetch) for each register tile of an m x n
// product on packed weights: rows [i, i + MR) (MR <= kRows; tokens, for callers whose
// tiles hold a token's several digit rows), columns [j, j + nc) in NG column groups. Column tiles outermost: a tile's packed weights (kPackedTileGroups x K
// blocks) stay in L2 while every row tile sweeps them. `next` is split into equal slices,
// one per tile call.
template <int kRows, typename F>
void for_each_packed_tile(int64_t m, int64_t n, PrefetchRange next, F&& f) {
  constexpr int64_t kTileCols = kPackedTileGroups * kPackCols;
  const int64_t row_tiles = (m + kRows - 1) / kRows;
  const int64_t tiles = row_tiles * ((n + kTileCols - 1) / kTileCols);
  for (int64_t j = 0, tile = 0; j < n; j += kTileCols) {
    const int64_t nc = n - j < kTileCols ? n - j : kTileCols;
    const int64_t groups = (nc + kPackCols - 1) / kPackCols;
    for (int64_t i = 0; i < m; i += kRows, ++tile) {
      const int64_t mr = m - i < kRows ? m - i : kRows;
      for_tile_edge<kRows, kPackedTileGroups>(mr, groups, [&]<int MR, int NG>() {
        f.template operator()<MR, NG>(i, j, nc, next.part(tile, tiles));
      });
    }
  }
}

void gemm_packed(const int8_t* a, int64_t lda, int64_t m, int64_t k, const int8_t* b, int64_t group_stride,
                 const int32_t* col_sums, int64_t n, int32_t* c, int64_t ldc, PrefetchRange next) {
  for_each_packed_tile<kPackedTileM>(
      m, n, next, [&]<int MR, int NG>(int64_t i, int64_t j, int64_t nc, PrefetchRange prefetch) {
        packed_tile<MR, NG>(a + i * lda, lda, k, b + j / kPackCols * group_stride, group_stride, col_sums + j, nc,
                            c + i * ldc + j, ldc, prefetch);
      });
}

inline typename S::F load_lanes(const int32_t* p) { return S::load_i32(p); }
inline typename S::F load_lanes(const float* p) { return S::load(p); }

// out[j] = (c[j] * a_scale) * b_scale[j] (+ bias[j]) for int32 or float c.
template <typename In, typename Out>
void epilogue_row_t(const In* c, int64_t n, float a_scale, const float* b_scale, int64_t b_stride,
                    const float* bias, Out* out) {
  const auto as = S::set1(a_scale);
  auto lanes = [&](typename S::F acc, typename S::F bs, const float* bias_at) {
    const auto scaled = S::mul(S::mul(acc, as), bs);
    return bias_at == nullptr ? scaled : S::add(scaled, S::load(bias_at));
  };
  int64_t j = 0;
  for (; j + S::kWidth <= n; j += S::kWidth) {
    const auto bs = b_stride == 0 ? S::set1(b_scale[0]) : S::load(b_scale + j);
    S::store(out + j, lanes(load_lanes(c + j), bs, bias == nullptr ? nullptr : bias + j));
  }
  if (j < n) {  // tail through zero-padded buffers, same arithmetic
    const int64_t rest = n - j;
    In c_tail[S::kWidth] = {};
    float bs_tail[S::kWidth] = {}, bias_tail[S::kWidth] = {};
    Out out_tail[S::kWidth] = {};
    for (int64_t t = 0; t < rest; ++t) {
      c_tail[t] = c[j + t];
      bs_tail[t] = b_scale[b_stride == 0 ? 0 : j + t];
      if (bias != nullptr) bias_tail[t] = bias[j + t];
    }
    S::store(out_tail, lanes(load_lanes(c_tail), S::load(bs_tail), bias == nullptr ? nullptr : bias_tail));
    for (int64_t t = 0; t < rest; ++t) out[j + t] = out_tail[t];
  }
}

template <typename In>
void epilogue_row_any(const In* c, int64_t n, float a_scale, const float* b_scale, int64_t b_stride,
                      const float* bias, DType out_dtype, void* out) {
  switch (out_dtype) {
    case DType::kBF16: return epilogue_row_t(c, n, a_scale, b_scale, b_stride, bias, static_cast<bf16*>(out));
    case DType::kF16: return epilogue_row_t(c, n, a_scale, b_scale, b_stride, bias, static_cast<fp16*>(out));
    case DType::kF32: return epilogue_row_t(c, n, a_scale, b_scale, b_stride, bias, static_cast<float*>(out));
  }
}

#include "int8_digits.h"

// combine_digits, then the epilogue of epilogue_row, a chunk of columns at a time.
void digits_epilogue_row(const int32_t* c, int64_t digit_stride, int digits, int64_t n, float a_scale,
                         const float* b_scale, const float* bias, DType out_dtype, void* out) {
  float dots[kDigitChunk];
  const int64_t out_bytes = dtype_size(out_dtype);
  for (int64_t j0 = 0; j0 < n; j0 += kDigitChunk) {
    const int64_t nc = n - j0 < kDigitChunk ? n - j0 : kDigitChunk;
    combine_digits(c + j0, digit_stride, digits, nc, dots);
    epilogue_row_any(dots, nc, a_scale, b_scale + j0, 1, bias == nullptr ? nullptr : bias + j0, out_dtype,
                     static_cast<char*>(out) + j0 * out_bytes);
  }
}

// ---- W8A16 activations as fixed point (split_fixed_point_rows in int8_gemm.h) -----------
// Digits are taken in float, exactly (every value is an integer below 2^23): the balanced
// low digit of a in base 2^b is a - 2^b floor((a + 2^(b-1)) / 2^b), in [-2^(b-1), 2^(b-1)),
// and the quotient is what the digits above hold.

template <typename T>
void store_lanes(T* p, typename S::F v, int64_t count) {
  if (count == S::kWidth) return S::store(p, v);
  if constexpr (S::kWidth > 1) {  // one lane has no part to store (aarch64's GCC warned of the memcpy)
    Lanes<T> buf{};
    S::store(buf.v, v);
    std::memcpy(p, buf.v, static_cast<size_t>(count) * sizeof(T));
  }
}

// No vector int16 store in S (only W8A16's activation split takes one): through floats.
inline void store_lanes(int16_t* p, typename S::F v, int64_t count) {
  Lanes<float> lanes;
  S::store(lanes.v, v);
  for (int64_t t = 0; t < count; ++t) p[t] = static_cast<int16_t>(lanes.v[t]);
}

// `count` lanes of fixed-point values a as `limbs` digits of base 2^kBits in rows `stride`
// apart, leading digit first.
template <int kBits, typename Digit>
inline void store_digits(typename S::F a, int limbs, Digit* leading, int64_t stride, int64_t count) {
  constexpr float kBase = static_cast<float>(1 << kBits), kHalf = kBase / 2;
  for (int j = limbs - 1; j > 0; --j) {
    const auto above = S::floor(S::mul(S::add(a, S::set1(kHalf)), S::set1(1.0f / kBase)));
    store_lanes(leading + j * stride, S::sub(a, S::mul(above, S::set1(kBase))), count);
    a = above;
  }
  store_lanes(leading, a, count);
}

// Rows this small would need a step below the normal floats (and a reciprocal beyond the
// largest one): they go to the float kernel like rows that are not finite.
constexpr float kMinSplitAbsmax = 0x1p-100f;

// Rows [i0, i1) of x as fixed point: scales[i], and store(i, c, a, count) for each vector
// of values a (exact integers in float lanes, count of them valid) from column c on.
template <typename T, typename Store>
bool split_rows_t(const T* x, int64_t k, int limbs, int64_t i0, int64_t i1, float* scales, const Store& store) {
  const float largest = static_cast<float>(split_max(limbs));
  for (int64_t i = i0; i < i1; ++i) {
    const T* row = x + i * k;
    const uint32_t bits = absmax_bits_t(row, k);
    const float absmax = f32_from_bits(bits);
    if (bits > kMaxFiniteBits || (absmax > 0.0f && absmax < kMinSplitAbsmax)) return false;
    scales[i] = absmax / largest;
    const auto inv = S::set1(absmax > 0.0f ? largest / absmax : 0.0f), limit = S::set1(largest);
    auto convert = [&](typename S::F v, int64_t c, int64_t count) {
      store(i, c, round_to_limit(v, inv, limit), count);
    };
    int64_t c = 0;
    for (; c + S::kWidth <= k; c += S::kWidth) convert(S::load(row + c), c, S::kWidth);
    if (c < k) convert(S::load(pad_tail(row + c, k - c).v), c, k - c);
  }
  return true;
}

template <typename Store>
bool split_rows_any(DType dtype, const void* x, int64_t k, int limbs, int64_t i0, int64_t i1, float* scales,
                    const Store& store) {
  switch (dtype) {
    case DType::kBF16: return split_rows_t(static_cast<const bf16*>(x), k, limbs, i0, i1, scales, store);
    case DType::kF16: return split_rows_t(static_cast<const fp16*>(x), k, limbs, i0, i1, scales, store);
    case DType::kF32: break;
  }
  return split_rows_t(static_cast<const float*>(x), k, limbs, i0, i1, scales, store);
}

bool split_fixed_point_rows(DType dtype, const void* x, int64_t k, int limbs, int64_t i0, int64_t i1, int8_t* rows,
                            float* scales) {
  return split_rows_any(dtype, x, k, limbs, i0, i1, scales, [&](int64_t i, int64_t c, typename S::F a, int64_t count) {
    store_digits<8>(a, limbs, rows + i * limbs * k + c, k, count);
  });
}

bool split_fixed_point_rows_i16(DType dtype, const void* x, int64_t k, int64_t ldr, int64_t i0, int64_t i1,
                                int16_t* rows, float* scales) {
  const int limbs = fixed_point_i16_limbs(dtype), int8_limbs = dtype == DType::kF32 ? 3 : 2;  // the same a
  for (int64_t r = i0 * limbs; ldr > k && r < i1 * limbs; ++r) {  // (rows is null when K = 0 = ldr)
    std::memset(rows + r * ldr + k, 0, static_cast<size_t>(ldr - k) * sizeof(int16_t));
  }
  return split_rows_any(dtype, x, k, int8_limbs, i0, i1, scales,
                        [&](int64_t i, int64_t c, typename S::F a, int64_t count) {
                          store_digits<15>(a, limbs, rows + i * limbs * ldr + c, ldr, count);
                        });
}

// ---- Per-group W8A16 on packed weights (W8A16GroupedArgs in int8_gemm.h) ---------------

// Each ISA file defines this after including this file: the product in register tiles that
// keep the group partials in registers (true), or false to leave it to the composition below.
bool w8a16_grouped_tiles(const W8A16GroupedArgs& p);

// The composition: each group's packed product into an int32 tile on the stack, then
// accumulated into the totals, for blocks of up to kTokens tokens by kDigitChunk columns.
void w8a16_grouped_composed(const W8A16GroupedArgs& p) {
  constexpr int64_t kTokens = 8, kMaxLimbs = 3;
  int32_t acc[kTokens * kMaxLimbs * kDigitChunk];
  const int64_t groups = (p.k + p.group_size - 1) / p.group_size;
  for (int64_t j0 = 0; j0 < p.n; j0 += kDigitChunk) {
    const int64_t nc = p.n - j0 < kDigitChunk ? p.n - j0 : kDigitChunk;
    for (int64_t t0 = 0; t0 < p.tokens; t0 += kTokens) {
      const int64_t tb = p.tokens - t0 < kTokens ? p.tokens - t0 : kTokens;
      float* totals = p.totals + t0 * p.ldt + j0;
      for (int64_t t = 0; t < tb; ++t) std::memset(totals + t * p.ldt, 0, static_cast<size_t>(nc) * sizeof(float));
      for (int64_t q = 0; q < groups; ++q) {
        const int64_t k0 = q * p.group_size, depth = p.k - k0 < p.group_size ? p.k - k0 : p.group_size;
        gemm_packed(p.a + t0 * p.limbs * p.k + k0, p.k, tb * p.limbs, depth,
                    p.b + j0 / kPackCols * p.group_stride + k0 / kPackDepth * kPackBlock, p.group_stride,
                    p.col_sums + q * p.sums_stride + j0, nc, acc, kDigitChunk, PrefetchRange{});
        digits_group_accumulate(acc, kDigitChunk, p.limbs, tb, depth, nc, p.scale + q * p.scale_stride + j0, totals,
                                p.ldt, p.weight_bound);
      }
    }
  }
}

void w8a16_packed_grouped(const W8A16GroupedArgs& p) {
  if (!w8a16_grouped_tiles(p)) w8a16_grouped_composed(p);
}

// ---- W8A16 ------------------------------------------------------------------------------
// Each lane's index, as floats (for a mask of a vector's first lanes).
alignas(64) inline constexpr float kLaneIndex[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

// A kW16M x kW16N register tile over one output block; per group, the partial dot products
// are scaled once and added to the totals.
template <typename T, int MR, int NR>
void w8a16_tile(const W8A16Args& p, int64_t i0, int64_t j0) {
  const T* x = static_cast<const T*>(p.x) + i0 * p.ldx;
  const int8_t* w = p.w + j0 * p.ldw;
  typename S::F total[MR][NR];
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) total[i][j] = S::set1(0.0f);
  }
  for (int64_t g = 0; g < p.groups; ++g) {
    const int64_t k0 = g * p.group_size, k1 = k0 + p.group_size < p.k ? k0 + p.group_size : p.k;
    typename S::F part[MR][NR];
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) part[i][j] = S::set1(0.0f);
    }
    auto step = [&](auto load_x, auto load_w) {
      typename S::F wv[NR];
      for (int j = 0; j < NR; ++j) wv[j] = load_w(j);
      for (int i = 0; i < MR; ++i) {
        const typename S::F xv = load_x(i);
        for (int j = 0; j < NR; ++j) part[i][j] = S::fmadd(xv, wv[j], part[i][j]);
      }
    };
    int64_t kk = k0;
    for (; kk + S::kWidth <= k1; kk += S::kWidth) {
      step([&](int i) { return S::load(x + i * p.ldx + kk); }, [&](int j) { return S::load(w + j * p.ldw + kk); });
    }
    const int64_t rest = k1 - kk;
    if (rest > 0 && kk + S::kWidth <= p.k) {
      // A ragged group end inside the rows: whole vectors that run into the next group,
      // whose lanes are zeroed in x (finite weights times 0 add exactly the zeros that the
      // padded copies below add, so both give the same sums).
      const typename S::B inside = S::le(S::load(kLaneIndex), S::set1(static_cast<float>(rest - 1)));
      step([&](int i) { return S::select(inside, S::load(x + i * p.ldx + kk), S::set1(0.0f)); },
           [&](int j) { return S::load(w + j * p.ldw + kk); });
    } else if (rest > 0) {  // the rows' end through zero-padded copies
      step(
          [&](int i) {
            T buf[S::kWidth] = {};
            std::memcpy(buf, x + i * p.ldx + kk, static_cast<size_t>(rest) * sizeof(T));
            return S::load(buf);
          },
          [&](int j) {
            int8_t buf[S::kWidth] = {};
            std::memcpy(buf, w + j * p.ldw + kk, static_cast<size_t>(rest));
            return S::load(buf);
          });
    }
    for (int j = 0; j < NR; ++j) {
      const typename S::F s = S::set1(p.scale[(j0 + j) * p.groups + g]);
      for (int i = 0; i < MR; ++i) total[i][j] = S::add(total[i][j], S::mul(part[i][j], s));
    }
  }
  T* out = static_cast<T*>(p.out);
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      const float bias = p.bias == nullptr ? 0.0f : p.bias[j0 + j];
      out[(i0 + i) * p.ldo + j0 + j] = from_f32<T>(S::hsum(total[i][j]) + bias);
    }
  }
}

// Per-channel scales (one group): no group partials, so a taller tile fits the registers.
template <typename T, int MR, int NR>
void w8a16_tile_per_channel(const W8A16Args& p, int64_t i0, int64_t j0) {
  const T* x = static_cast<const T*>(p.x) + i0 * p.ldx;
  const int8_t* w = p.w + j0 * p.ldw;
  typename S::F acc[MR][NR];
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) acc[i][j] = S::set1(0.0f);
  }
  int64_t kk = 0;
  for (; kk + S::kWidth <= p.k; kk += S::kWidth) {
    typename S::F wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = S::load(w + j * p.ldw + kk);
    for (int i = 0; i < MR; ++i) {
      const typename S::F xv = S::load(x + i * p.ldx + kk);
      for (int j = 0; j < NR; ++j) acc[i][j] = S::fmadd(xv, wv[j], acc[i][j]);
    }
  }
  float tail[MR][NR] = {};
  for (; kk < p.k; ++kk) {  // ragged end of K, element by element
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) tail[i][j] += to_f32(x[i * p.ldx + kk]) * static_cast<float>(w[j * p.ldw + kk]);
    }
  }
  T* out = static_cast<T*>(p.out);
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      const float dot = S::hsum(acc[i][j]) + tail[i][j];
      const float bias = p.bias == nullptr ? 0.0f : p.bias[j0 + j];
      out[(i0 + i) * p.ldo + j0 + j] = from_f32<T>(dot * p.scale[j0 + j] + bias);
    }
  }
}

template <typename T, int MR, int NR = kW16N>
void w8a16_edge(const W8A16Args& p, int64_t i0, int64_t j0, int64_t mr, int64_t nr) {
  if constexpr (NR == 1) {
    if constexpr (MR == 1) {
      w8a16_tile<T, 1, 1>(p, i0, j0);
    } else {
      mr == MR ? w8a16_tile<T, MR, 1>(p, i0, j0) : w8a16_edge<T, MR - 1>(p, i0, j0, mr, nr);
    }
  } else {
    if (mr == MR && nr == NR) return w8a16_tile<T, MR, NR>(p, i0, j0);
    if (mr == MR) return w8a16_edge<T, MR, NR - 1>(p, i0, j0, mr, nr);
    if constexpr (MR > 1) return w8a16_edge<T, MR - 1, NR>(p, i0, j0, mr, nr);
  }
}

template <typename T>
void w8a16_gemm_per_channel(const W8A16Args& p) {
  for (int64_t j = 0; j < p.n; j += kW16N) {
    const int64_t nr = p.n - j < kW16N ? p.n - j : kW16N;
    for (int64_t i = 0; i < p.m; i += kW16ChannelM) {
      const int64_t mr = p.m - i < kW16ChannelM ? p.m - i : kW16ChannelM;
      for_tile_edge<kW16ChannelM, kW16N>(mr, nr, [&]<int MR, int NR>() { w8a16_tile_per_channel<T, MR, NR>(p, i, j); });
    }
  }
}

template <typename T>
void w8a16_gemm_t(const W8A16Args& p) {
  if (p.groups == 1) return w8a16_gemm_per_channel<T>(p);
  // Weight rows outermost: a kW16N x K strip of weights is reused from cache by every row tile.
  for (int64_t j = 0; j < p.n; j += kW16N) {
    const int64_t nr = p.n - j < kW16N ? p.n - j : kW16N;
    for (int64_t i = 0; i < p.m; i += kW16M) {
      const int64_t mr = p.m - i < kW16M ? p.m - i : kW16M;
      w8a16_edge<T, kW16M>(p, i, j, mr, nr);
    }
  }
}

void w8a16_gemm(const W8A16Args& p) {
  switch (p.dtype) {
    case DType::kBF16: return w8a16_gemm_t<bf16>(p);
    case DType::kF16: return w8a16_gemm_t<fp16>(p);
    case DType::kF32: return w8a16_gemm_t<float>(p);
  }
}

// ---- Packed weights back to canonical rows ----------------------------------------------
// A column group's bytes are 4-value runs of each column, 64 bytes apart: they are gathered
// kUnpackChunk values of K at a time into a small buffer of one row per column, which is
// then copied out row by row: 4-byte writes straight to 16 rows k apart would land on the
// same few cache sets whenever k is a multiple of 4096.
constexpr int64_t kUnpackChunk = 256;
static_assert(kUnpackChunk % kPackDepth == 0, "chunks start on packed blocks");

void unpack_packed(const int8_t* b, int64_t group_stride, int64_t j0, int64_t j1, int64_t k, int8_t* rows) {
  int8_t columns[kPackCols][kUnpackChunk];
  for (int64_t j = j0; j < j1; j += kPackCols) {
    const int8_t* group = b + j / kPackCols * group_stride;
    const int64_t cols = j1 - j < kPackCols ? j1 - j : kPackCols;
    for (int64_t k0 = 0; k0 < k; k0 += kUnpackChunk) {
      const int64_t depth = k - k0 < kUnpackChunk ? k - k0 : kUnpackChunk;
      for (int64_t kq = 0; kq * kPackDepth < depth; ++kq) {  // the last run may pass K: zero padding
        const int8_t* block = group + (k0 / kPackDepth + kq) * kPackBlock;
        for (int64_t c = 0; c < kPackCols; ++c) std::memcpy(&columns[c][kq * kPackDepth], block + c * kPackDepth, 4);
      }
      for (int64_t c = 0; c < cols; ++c) {
        std::memcpy(rows + (j - j0 + c) * k + k0, columns[c], static_cast<size_t>(depth));
      }
    }
  }
}

// The ISA's own gemm_packed where it has one (a function, so that GCC does not warn that a
// function's address is never null).
constexpr GemmPacked own_or_generic(GemmPacked own) { return own != nullptr ? own : gemm_packed; }

const Int8GemmKernels kGemmTable{gemm_s8s8s32,
                                  own_or_generic(kGemmPacked),
                                  kGemmPackedScaled,
                                  epilogue_row_any<int32_t>,
                                  epilogue_row_any<float>,
                                  split_fixed_point_rows,
                                  split_fixed_point_rows_i16,
                                  kGemmPackedI16,
                                  digits_epilogue_row,
                                  w8a16_packed_grouped,
                                  kW8A16PackedGroupedI16,
                                  w8a16_gemm,
                                  unpack_packed,
                                  /*release_tiles=*/nullptr};
