// The CPU kernel of a pass plan's per-batch part (hier_ps/plan.py, _plan_table): for one table, the unique
// (batch, row) pairs of its occurrences and the stable order of the occurrences by (batch, row).
//
// Two stable counting sorts (by row, then by batch) give that order in O(n + rows + batches), where the numpy path
// sorts position-tagged codes and derives the rest in a dozen passes; one walk over the order then writes every
// output. The result is the numpy path's, array for array (tests/test_plan.py holds the two to each other).
//
// Built with the other cpu_kernels sources into one library by hier_ps/hbm/cpu_kernels.py; called through ctypes
// (no GIL).
#include <stdint.h>
#include <stdlib.h>

typedef int64_t i64;

// The last slot s with bounds[s] <= i (empty slots skipped, as numpy's searchsorted(side="right") - 1).
static int slot_of(const i64* bounds, int n_slots, i64 i) {
  int lo = 0, hi = n_slots - 1;  // bounds[lo] <= i always (bounds[0] == 0)
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (bounds[mid] <= i) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Inputs, per occurrence i in [0, n): loc[i] in [0, n_rows) its row, batch[i] in [0, n_batches) its batch,
// example[i] its example in the pass; bounds[0..n_slots] the occurrences' slot boundaries (slot s owns
// [bounds[s], bounds[s+1])).
// Outputs (caller-allocated): urow_offsets[n_batches+1], urows[n] and urow_counts[n] (the first n_pairs used),
// occ_offsets[n_batches+1], sorted_slot[n], sorted_example[n], rel[n] (each occurrence's position among its batch's
// unique rows). Returns n_pairs, or -1 when out of memory (nothing usable is written then).
i64 plan_batches(const i64* loc, const i64* batch, const i64* example, i64 n, i64 n_rows, i64 n_batches,
                 const i64* bounds, int n_slots, i64* urow_offsets, i64* urows, i64* urow_counts, i64* occ_offsets,
                 int16_t* sorted_slot, int32_t* sorted_example, i64* rel) {
  i64* start = calloc((size_t)(n_rows > n_batches ? n_rows : n_batches) + 1, sizeof(i64));
  i64* by_row = malloc(sizeof(i64) * (size_t)(n > 0 ? n : 1));
  i64* perm = malloc(sizeof(i64) * (size_t)(n > 0 ? n : 1));
  if (!start || !by_row || !perm) {
    free(start);
    free(by_row);
    free(perm);
    return -1;
  }
  // 1. stable by row
  for (i64 i = 0; i < n; ++i) start[loc[i] + 1]++;
  for (i64 r = 0; r < n_rows; ++r) start[r + 1] += start[r];
  for (i64 i = 0; i < n; ++i) by_row[start[loc[i]]++] = i;
  // 2. stable by batch: perm is sorted by (batch, row), ties in occurrence order
  for (i64 b = 0; b <= n_batches; ++b) start[b] = 0;
  for (i64 i = 0; i < n; ++i) start[batch[i] + 1]++;
  for (i64 b = 0; b < n_batches; ++b) start[b + 1] += start[b];
  for (i64 b = 0; b <= n_batches; ++b) occ_offsets[b] = start[b];
  for (i64 j = 0; j < n; ++j) {
    i64 i = by_row[j];
    perm[start[batch[i]]++] = i;
  }
  // 3. one walk: pairs, their counts and batch offsets, the sorted slot and example, each occurrence's position
  i64 pairs = 0, prev_b = -1, prev_r = -1, next_b = 0;
  for (i64 j = 0; j < n; ++j) {
    i64 i = perm[j], b = batch[i], r = loc[i];
    if (b != prev_b || r != prev_r) {
      while (next_b <= b) urow_offsets[next_b++] = pairs;  // batches up to b (empty ones too) start here
      urows[pairs] = r;
      urow_counts[pairs] = 0;
      ++pairs;
      prev_b = b;
      prev_r = r;
    }
    urow_counts[pairs - 1]++;
    rel[i] = pairs - 1 - urow_offsets[b];
    sorted_slot[j] = (int16_t)slot_of(bounds, n_slots, i);
    sorted_example[j] = (int32_t)example[i];
  }
  while (next_b <= n_batches) urow_offsets[next_b++] = pairs;
  free(start);
  free(by_row);
  free(perm);
  return pairs;
}
