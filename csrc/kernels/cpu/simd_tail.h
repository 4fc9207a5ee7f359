// Tails shorter than a vector: a zero-filled stack buffer of one vector's lanes, so the
// vector body stays the only arithmetic and a tail rounds exactly like the rest of a run.
// Included inside an ISA namespace after that ISA's `S` (see quant_impl.h).

template <typename T>
struct Lanes {
  T v[S::kWidth];
};

template <typename T>
Lanes<T> pad_tail(const T* p, int64_t n) {
  Lanes<T> buf{};
  std::memcpy(buf.v, p, static_cast<size_t>(n) * sizeof(T));
  return buf;
}
