// Host-side check of how the few-row tensor-core GEMVs (skinny_mma.cuh) order their work:
// skinny_grid_blocks' grid under a cap, and skinny_walk's rolling register slots over a
// block's tiles, emulated warp by warp with the kernels' own functions (skinny_walk,
// skinny_steps_per_warp, skinny_step_k0). Over random tile counts, caps, K and slot counts:
// every load lands in a free slot and is used from it by the very step it loaded; x is
// staged after the first min(F, steps) loads and before any use; a warp uses its steps of a
// tile in order and reaches the tile's epilogue after the last; all warps of a block reach
// their epilogues (the block barriers) at the same uses; and every (tile, K step) of the
// launch is decoded exactly once, every tile finished once. No GPU needed; built and run by
// tests. Exits 1 with the first mismatch.
#include <cstdio>
#include <random>
#include <vector>

// skinny_walk is __host__ __device__; its callbacks here are host lambdas, which nvcc warns
// about for the device side that never runs them.
#pragma nv_diag_suppress 20013, 20015
#include "../../csrc/kernels/cuda/skinny_mma.cuh"

using namespace effgen::cuda;

namespace {

std::mt19937 rng(11);

bool fail(const char* what, int tiles, int64_t cap, int64_t k, int block, int warp) {
  std::printf("%s (tiles %d, cap %lld, k %lld, block %d, warp %d)\n", what, tiles, static_cast<long long>(cap),
              static_cast<long long>(k), block, warp);
  return false;
}

// One launch: `tiles` channel tiles, grid cap `cap`, K of k elements in steps of
// step_elements, F slots.
template <int F>
bool launch(int tiles, int64_t cap, int64_t k, int64_t step_elements) {
  const int64_t blocks = skinny_grid_blocks(tiles, cap);
  if (blocks < 1 || blocks > tiles || (cap > 0 && blocks > cap)) return fail("grid size", tiles, cap, k, -1, -1);
  const int64_t share = cap > 0 ? (tiles + cap - 1) / cap : 1;  // the fewest tiles the busiest block can take
  const int64_t k_steps = (k + step_elements - 1) / step_elements;
  std::vector<int> decoded(static_cast<size_t>(tiles * k_steps)), finished(static_cast<size_t>(tiles));
  const int steps = skinny_steps_per_warp(k, step_elements);
  for (int block = 0; block < blocks; ++block) {
    const SkinnyWalk walk{tiles, block, static_cast<int>(blocks), steps};
    const int block_tiles = (tiles - block + walk.stride - 1) / walk.stride;
    if (block_tiles < 1 || block_tiles > share) return fail("tiles of a block", tiles, cap, k, block, -1);
    std::vector<int64_t> barriers_of_warp0;
    for (int warp = 0; warp < kSkinnyWarps; ++warp) {
      SkinnyCursor slots[F];
      bool full[F] = {};
      int64_t loads = 0, uses = 0;
      bool started = false, ok = true;
      SkinnyCursor expected{block, 0};
      std::vector<int64_t> barriers;
      skinny_walk<F>(
          walk,
          [&](int slot, const SkinnyCursor& at) {
            if (full[slot]) ok = ok && fail("load into a slot still holding a step", tiles, cap, k, block, warp);
            slots[slot] = at, full[slot] = true, ++loads;
          },
          [&] {
            const int64_t all = int64_t{block_tiles} * steps;
            if (started || uses != 0 || loads != (all < F ? all : F)) {
              ok = ok && fail("x staged at the wrong time", tiles, cap, k, block, warp);
            }
            started = true;
          },
          [&](int slot, const SkinnyCursor& at) {
            if (!started || !full[slot] || slots[slot].tile != at.tile || slots[slot].step != at.step ||
                at.tile != expected.tile || at.step != expected.step) {
              ok = ok && fail("step used from the wrong slot or out of order", tiles, cap, k, block, warp);
              return;
            }
            full[slot] = false, ++uses;
            const int64_t k0 = skinny_step_k0(warp, at, step_elements);
            if (k0 < k) ++decoded[static_cast<size_t>(at.tile * k_steps + k0 / step_elements)];
            if (at.step + 1 < steps) {
              expected.step = at.step + 1;
              return;
            }
            barriers.push_back(uses);
            if (warp == 0) ++finished[static_cast<size_t>(at.tile)];
            expected = {at.tile + walk.stride, 0};
          });
      if (!ok) return false;
      for (bool f : full) {
        if (f) return fail("a loaded step never used", tiles, cap, k, block, warp);
      }
      if (uses != int64_t{block_tiles} * steps) return fail("steps walked", tiles, cap, k, block, warp);
      if (warp == 0) barriers_of_warp0 = barriers;
      if (barriers != barriers_of_warp0) return fail("warps reach the epilogues at different uses", tiles, cap, k, block, warp);
    }
  }
  for (int v : decoded) {
    if (v != 1) return fail("a K step decoded other than once", tiles, cap, k, -1, -1);
  }
  for (int v : finished) {
    if (v != 1) return fail("a tile finished other than once", tiles, cap, k, -1, -1);
  }
  return true;
}

}  // namespace

int main() {
  std::uniform_int_distribution<int> tile_count(1, 40), k_draw(0, 5000);
  for (int trial = 0; trial < 400; ++trial) {
    const int tiles = tile_count(rng);
    const int64_t cap = std::uniform_int_distribution<int64_t>(-1, tiles + 2)(rng);  // -1, 0: one block a tile
    const int64_t k = trial % 10 == 0 ? 0 : k_draw(rng);
    const int64_t step_elements = trial % 2 == 0 ? 128 : 64;  // binary / ternary, W8A16
    if (!launch<1>(tiles, cap, k, step_elements) || !launch<2>(tiles, cap, k, step_elements) ||
        !launch<4>(tiles, cap, k, step_elements) || !launch<8>(tiles, cap, k, step_elements)) {
      return 1;
    }
  }
  std::printf("ok\n");
  return 0;
}
