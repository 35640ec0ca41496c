// The CPU kernel of a pass plan's per-batch part (hier_ps/plan.py, _plan_table): for one table, the unique
// (batch, row) pairs of its occurrences and the stable order of the occurrences by (batch, row).
//
// When each slot's occurrences ascend by batch (a pass plan's always do), that order is found batch by batch
// (by_batch: a stable radix sort by row of each batch's occurrences, in cache); otherwise two stable counting sorts
// over the whole pass (by row, then by batch) give it in O(n + rows + batches). The numpy path sorts
// position-tagged codes and derives the rest in a dozen passes; here one walk over the order writes every output.
// The result is the numpy path's, array for array (tests/test_plan.py holds the two to each other).
//
// Built with the other cpu_kernels sources into one library by hier_ps/hbm/cpu_kernels.py; called through ctypes
// (no GIL).
#include <stdint.h>
#include <stdlib.h>

typedef int64_t i64;

#define MAX_SLOTS 1024  // more slots on one table than this: the whole-pass sorts

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

static i64 by_batch(const i64* loc, const i64* batch, const i64* example, i64 n_rows, i64 n_batches,
                    const i64* bounds, int n_slots, i64* urow_offsets, i64* urows, i64* urow_counts,
                    i64* occ_offsets, int16_t* sorted_slot, int32_t* sorted_example, i64* rel);

// Whether every slot's occurrences come batch after batch (a pass plan's always do: examples in order).
static int batches_ascend(const i64* batch, const i64* bounds, int n_slots) {
  for (int s = 0; s < n_slots; ++s) {
    for (i64 i = bounds[s] + 1; i < bounds[s + 1]; ++i) {
      if (batch[i] < batch[i - 1]) return 0;
    }
  }
  return 1;
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
  if (n_slots <= MAX_SLOTS && batches_ascend(batch, bounds, n_slots)) {
    i64 pairs = by_batch(loc, batch, example, n_rows, n_batches, bounds, n_slots, urow_offsets, urows, urow_counts,
                         occ_offsets, sorted_slot, sorted_example, rel);
    if (pairs != -2) return pairs;  // -2: its scratch could not be allocated; the whole-pass sorts try theirs
  }
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

// The same plan batch by batch, when each slot's occurrences ascend by batch: a batch's occurrences are one range
// per slot, gathered in occurrence order and sorted by row with a stable LSD radix sort (8-bit digits, the digits
// that vary), all in the batch's few KiB; the whole-pass counting sorts above scatter over all n occurrences and
// rows instead. Returns n_pairs, or -2 when out of memory.
static i64 by_batch(const i64* loc, const i64* batch, const i64* example, i64 n_rows, i64 n_batches,
                    const i64* bounds, int n_slots, i64* urow_offsets, i64* urows, i64* urow_counts,
                    i64* occ_offsets, int16_t* sorted_slot, int32_t* sorted_example, i64* rel) {
  i64 cur[MAX_SLOTS];  // each slot's first occurrence not yet taken
  for (int s = 0; s < n_slots; ++s) cur[s] = bounds[s];
  // the largest batch, for the scratch
  i64 most = 0;
  {
    i64 at[MAX_SLOTS];
    for (int s = 0; s < n_slots; ++s) at[s] = bounds[s];
    for (i64 b = 0; b < n_batches; ++b) {
      i64 m = 0;
      for (int s = 0; s < n_slots; ++s) {
        i64 e = at[s];
        while (e < bounds[s + 1] && batch[e] == b) ++e;
        m += e - at[s];
        at[s] = e;
      }
      if (m > most) most = m;
    }
  }
  i64* buf = malloc(sizeof(i64) * (size_t)(4 * (most > 0 ? most : 1)));
  int16_t* slot_buf = malloc(sizeof(int16_t) * (size_t)(2 * (most > 0 ? most : 1)));
  if (!buf || !slot_buf) {
    free(buf);
    free(slot_buf);
    return -2;
  }
  i64 *key = buf, *idx = buf + most, *key2 = buf + 2 * most, *idx2 = buf + 3 * most;
  int16_t *sl = slot_buf, *sl2 = slot_buf + most;
  int bits = 0;
  while (bits < 63 && ((i64)1 << bits) < n_rows) ++bits;
  i64 pairs = 0, occ = 0;
  for (i64 b = 0; b < n_batches; ++b) {
    urow_offsets[b] = pairs;
    occ_offsets[b] = occ;
    i64 m = 0;  // gather: slot after slot, each in occurrence order
    for (int s = 0; s < n_slots; ++s) {
      i64 e = cur[s];
      while (e < bounds[s + 1] && batch[e] == b) {
        key[m] = loc[e];
        idx[m] = e;
        sl[m] = (int16_t)s;
        ++m;
        ++e;
      }
      cur[s] = e;
    }
    for (int shift = 0; shift < bits; shift += 8) {  // stable LSD radix by row
      i64 count[257] = {0};
      for (i64 j = 0; j < m; ++j) count[((key[j] >> shift) & 255) + 1]++;
      int same = 0;
      for (int d = 1; d <= 256; ++d) same |= count[d] == m;
      if (same) continue;  // one digit value: this pass would not move anything
      for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
      for (i64 j = 0; j < m; ++j) {
        i64 to = count[(key[j] >> shift) & 255]++;
        key2[to] = key[j];
        idx2[to] = idx[j];
        sl2[to] = sl[j];
      }
      i64* t = key;
      key = key2;
      key2 = t;
      t = idx;
      idx = idx2;
      idx2 = t;
      int16_t* u = sl;
      sl = sl2;
      sl2 = u;
    }
    i64 prev_r = -1;
    for (i64 j = 0; j < m; ++j) {
      const i64 r = key[j], i = idx[j];
      if (r != prev_r) {
        urows[pairs] = r;
        urow_counts[pairs] = 0;
        ++pairs;
        prev_r = r;
      }
      urow_counts[pairs - 1]++;
      rel[i] = pairs - 1 - urow_offsets[b];
      sorted_slot[occ + j] = sl[j];
      sorted_example[occ + j] = (int32_t)example[i];
    }
    occ += m;
  }
  urow_offsets[n_batches] = pairs;
  occ_offsets[n_batches] = occ;
  free(buf);
  free(slot_buf);
  return pairs;
}
