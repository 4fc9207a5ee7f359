// build_lut_tables' walk over rows and input groups: group_table(xs, table) with xs the
// group's layout.width inputs (zeros past k) and table its layout.entries() floats. Include
// it inside each ISA's namespace after its target pragma (no include guard on purpose, as
// binary_lut_dispatch.h): the loop then compiles for that target and the group function,
// a few vector instructions, inlines into it (across targets GCC called it once a group:
// 64 x 1536 -> 576 binary 1.29x over the scalar tables, inlined 1.42x).

template <typename GroupTable>
void for_each_lut_group(LutLayout layout, const float* x, int64_t m, int64_t k, float* tables,
                        const GroupTable& group_table) {
  const int64_t groups = layout.table_groups(k), whole = k / layout.width, entries = layout.entries();
  for (int64_t i = 0; i < m; ++i) {
    const float* row = x + i * k;
    float* row_tables = tables + i * groups * entries;
    for (int64_t g = 0; g < whole; ++g) group_table(row + g * layout.width, row_tables + g * entries);
    for (int64_t g = whole; g < groups; ++g) {
      float xs[4] = {};  // width <= 4
      for (int64_t t = 0; t < layout.width && g * layout.width + t < k; ++t) xs[t] = row[g * layout.width + t];
      group_table(xs, row_tables + g * entries);
    }
  }
}
