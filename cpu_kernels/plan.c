// The CPU kernel of a pass plan's per-batch part (hier_ps/plan.py, _plan_table): for one table, the unique
// (batch, row) pairs of its occurrences and the stable order of the occurrences by (batch, row).
//
// It reads the pass's chunk as it is: each of the table's slots by its CSR offsets over the pass's examples. Batch b
// is examples [b * batch_size, (b + 1) * batch_size), so its occurrences of a slot are one range, and no
// per-occurrence batch or example array is needed. Batch by batch, its occurrences are gathered slot after slot in
// occurrence order and sorted by row with a stable LSD radix sort in cache (digits of up to 11 bits, those that
// vary: two passes up to 2^22 rows), carrying each occurrence's slot and example in the batch packed in one word;
// one walk over the sorted batch writes every output. The numpy path sorts position-tagged codes over the whole
// pass and derives the rest in a dozen passes. The result is the numpy path's, array for array (tests/test_plan.py
// holds the two to each other).
//
// Built with the other cpu_kernels sources into one library by hier_ps/hbm/cpu_kernels.py; called through ctypes
// (no GIL).
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int64_t i64;

// Inputs: loc[n] each occurrence's row in [0, n_rows), the table's slots' occurrences concatenated in slot order;
// offsets[s][0..n_examples] slot s's CSR offsets (its occurrences of example x are offsets[s][x] - offsets[s][0]
// .. offsets[s][x + 1] - offsets[s][0] into its part of loc); bounds[0..n_slots] where each slot's part starts.
// Outputs (caller-allocated): urow_offsets[n_batches+1], urows[n] and urow_counts[n] (the first n_pairs used),
// occ_offsets[n_batches+1], sorted_slot[n], sorted_example[n] (the occurrences sorted by (batch, row), ties in
// occurrence order), rel[n] (each occurrence's position among its batch's unique rows). Returns n_pairs, or -1
// when out of memory (nothing usable is written then).
i64 plan_batches(const i64* loc, const i64* const* offsets, i64 n_examples, i64 batch_size, i64 n_rows,
                 i64 n_batches, const i64* bounds, int n_slots, i64* urow_offsets, i64* urows, i64* urow_counts,
                 i64* occ_offsets, int16_t* sorted_slot, int32_t* sorted_example, i64* rel) {
  i64 most = 0;  // the largest batch, for the scratch
  for (i64 b = 0; b < n_batches; ++b) {
    const i64 x0 = b * batch_size, x1 = x0 + batch_size < n_examples ? x0 + batch_size : n_examples;
    i64 m = 0;
    for (int s = 0; s < n_slots; ++s) m += offsets[s][x1] - offsets[s][x0];
    if (m > most) most = m;
  }
  i64* buf = malloc(sizeof(i64) * (size_t)(6 * (most > 0 ? most : 1)));
  if (!buf) return -1;
  i64 *key = buf, *idx = buf + most, *tag = buf + 2 * most, *key2 = buf + 3 * most, *idx2 = buf + 4 * most,
      *tag2 = buf + 5 * most;
  int bits = 0;
  while (bits < 63 && ((i64)1 << bits) < n_rows) ++bits;
  const int n_digits = (bits + 10) / 11, width = n_digits ? (bits + n_digits - 1) / n_digits : 0;
  const i64 digit_mask = ((i64)1 << width) - 1;
  i64 count[2049];  // a digit's counts, then its first positions
  i64 pairs = 0, occ = 0;
  for (i64 b = 0; b < n_batches; ++b) {
    const i64 x0 = b * batch_size, x1 = x0 + batch_size < n_examples ? x0 + batch_size : n_examples;
    urow_offsets[b] = pairs;
    occ_offsets[b] = occ;
    i64 m = 0;  // gather: slot after slot, each in occurrence order; tag = slot << 32 | example in the batch
    for (int s = 0; s < n_slots; ++s) {
      const i64* off = offsets[s];
      const i64 base = bounds[s] - off[0];  // off[x] - off[0]: the occurrence's place in the slot
      for (i64 x = x0; x < x1; ++x) {
        for (i64 e = base + off[x]; e < base + off[x + 1]; ++e) {
          key[m] = loc[e];
          idx[m] = e;
          tag[m] = ((i64)s << 32) | (x - x0);
          ++m;
        }
      }
    }
    for (int shift = 0; shift < bits; shift += width) {  // stable LSD radix by row
      memset(count, 0, sizeof(i64) * (size_t)(digit_mask + 2));
      for (i64 j = 0; j < m; ++j) count[((key[j] >> shift) & digit_mask) + 1]++;
      int same = 0;
      for (i64 d = 1; d <= digit_mask + 1; ++d) same |= count[d] == m;
      if (same) continue;  // one digit value: this pass would not move anything
      for (i64 d = 0; d < digit_mask + 1; ++d) count[d + 1] += count[d];
      for (i64 j = 0; j < m; ++j) {
        const i64 to = count[(key[j] >> shift) & digit_mask]++;
        key2[to] = key[j];
        idx2[to] = idx[j];
        tag2[to] = tag[j];
      }
      i64* t = key;
      key = key2;
      key2 = t;
      t = idx;
      idx = idx2;
      idx2 = t;
      t = tag;
      tag = tag2;
      tag2 = t;
    }
    i64 prev_r = -1;
    for (i64 j = 0; j < m; ++j) {
      const i64 r = key[j];
      if (r != prev_r) {
        urows[pairs] = r;
        urow_counts[pairs] = 0;
        ++pairs;
        prev_r = r;
      }
      urow_counts[pairs - 1]++;
      rel[idx[j]] = pairs - 1 - urow_offsets[b];
      sorted_slot[occ + j] = (int16_t)(tag[j] >> 32);
      sorted_example[occ + j] = (int32_t)(x0 + (tag[j] & 0xffffffff));
    }
    occ += m;
  }
  urow_offsets[n_batches] = pairs;
  occ_offsets[n_batches] = occ;
  free(buf);
  return pairs;
}
