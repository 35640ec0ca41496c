// The CPU kernel that assembles one batch's table-batched lookup for one group of like tables
// (hier_ps/hbm/batched.py, PassLookups): the arrays BatchLookup builds with numpy from PassPlan.batch(i), written
// straight from the pass plan's own arrays in one call, where the numpy path takes views and a few numpy calls per
// slot and per table of every batch.
//
// The result is the numpy path's, array for array (tests/hbm/test_batched.py holds the two to each other).
//
// Built with the other cpu_kernels sources into one library by hier_ps/hbm/cpu_kernels.py; called through ctypes
// (no GIL).
#include <stdint.h>

typedef int64_t i64;

// The group's slots j < k, in the part's order: off[j] the pass's CSR offsets of slot j (int64[examples+1]), loc[j]
// its occurrences' rows in its table's working set (occurrence e of the slot at loc[j][e - off[j][0]]), base[j] its
// table's first row in the group's storage, mean[j] nonzero for a mean-pooled slot. The batch is examples
// [x0, x0 + nb).
// Writes rows[nnz] (each occurrence's group row, slot after slot), offsets[k * nb + 1] (bag j * nb + i is example i
// of slot j) and, where div is not NULL, div[k * nb] (a mean slot's bag sizes, at least 1; 1 for sum slots).
//
// The group's tables m < n_tables that train, in the group's order: the pass plan's per-batch arrays of each
// (PassPlan.urow_offsets, urows, urow_counts, occ_offsets, sorted_slot, sorted_example), tbase[m] the table's first
// row, and first[fstart[m] + s] the part position of the table's s-th slot. For batch b, writes urows_out[u] (each
// table's unique rows of the batch as group rows, table after table), bags[] (the occurrences' bags, each table's
// sorted by row, ties in occurrence order) and seg[u + 1] (the CSR of the unique rows over bags).
void batch_lookup(int k, const i64* const* off, const i64* const* loc, const i64* base, const uint8_t* mean, i64 x0,
                  i64 nb, i64* rows, i64* offsets, float* div, int n_tables, i64 b, const i64* const* urow_offsets,
                  const i64* const* urows, const i64* const* urow_counts, const i64* const* occ_offsets,
                  const int16_t* const* sorted_slot, const int32_t* const* sorted_example, const i64* tbase,
                  const i64* first, const i64* fstart, i64* urows_out, i64* bags, i64* seg) {
  i64 at = 0;
  offsets[0] = 0;
  for (int j = 0; j < k; ++j) {
    const i64* o = off[j];
    const i64 lo = o[x0], hi = o[x0 + nb], add = base[j];
    const i64* l = loc[j] + (lo - o[0]);
    for (i64 e = 0; e < hi - lo; ++e) rows[at + e] = l[e] + add;
    i64* w = offsets + 1 + (i64)j * nb;
    for (i64 i = 0; i < nb; ++i) w[i] = at + (o[x0 + i + 1] - lo);
    if (div) {
      float* d = div + (i64)j * nb;
      for (i64 i = 0; i < nb; ++i) {
        const i64 n = o[x0 + i + 1] - o[x0 + i];
        d[i] = mean[j] ? (float)(n > 1 ? n : 1) : 1.0f;
      }
    }
    at += hi - lo;
  }
  i64 u = 0, occ = 0;
  seg[0] = 0;
  for (int m = 0; m < n_tables; ++m) {
    const i64 u0 = urow_offsets[m][b], u1 = urow_offsets[m][b + 1];
    const i64 o0 = occ_offsets[m][b], o1 = occ_offsets[m][b + 1];
    const i64 add = tbase[m];
    for (i64 r = u0; r < u1; ++r) {
      urows_out[u] = urows[m][r] + add;
      seg[u + 1] = seg[u] + urow_counts[m][r];
      ++u;
    }
    const i64* f = first + fstart[m];
    const int16_t* ss = sorted_slot[m];
    const int32_t* se = sorted_example[m];
    for (i64 e = o0; e < o1; ++e) bags[occ++] = f[ss[e]] * nb + ((i64)se[e] - x0);
  }
}
