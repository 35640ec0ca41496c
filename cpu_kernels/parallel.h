// The one parallel-for of the CPU kernels: split n items into ranges of at least min_per items over at most `want`
// threads (threads_for), then run one task per range (run_parallel); or let the threads claim chunks of the items
// (next_chunk). Included by each kernel file (static, so each translation unit has its own copy and the library
// exports none of it).
#ifndef HIER_PS_PARALLEL_H
#define HIER_PS_PARALLEL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define MAXTHREADS 64

// How many threads split n items so that each gets at least min_per: between 1 and min(want, MAXTHREADS).
static int threads_for(int64_t n, int64_t min_per, int want) {
  int64_t t = n / min_per;
  if (t > want) t = want;
  if (t > MAXTHREADS) t = MAXTHREADS;
  return t < 1 ? 1 : (int)t;
}

// fn(tasks + k * size) for k in [0, n): the first in the caller's thread, each other one in a thread of its own
// (run here instead when no thread can be started). Returns when all are done.
static void run_parallel(void* (*fn)(void*), char* tasks, size_t size, int n) {
  pthread_t threads[MAXTHREADS];
  int started[MAXTHREADS] = {0};
  for (int k = 1; k < n; ++k) started[k] = pthread_create(&threads[k], 0, fn, tasks + k * size) == 0;
  fn(tasks);
  for (int k = 1; k < n; ++k) {
    if (started[k]) {
      pthread_join(threads[k], 0);
    } else {
      fn(tasks + k * size);
    }
  }
}

// Items [0, n) shared by the threads of one call in chunks of `chunk`: each thread claims the next chunk until none
// is left, so a thread that the OS holds back (the core busy with other work) leaves its share to the others, where
// fixed ranges would make the call wait for it.
typedef struct {
  atomic_llong next;
  int64_t n, chunk;
} Chunks;

static void chunks_init(Chunks* c, int64_t n, int64_t chunk) {
  atomic_init(&c->next, 0);
  c->n = n;
  c->chunk = chunk;
}

// Claims the next chunk [*lo, *hi); 0 when none is left.
static int next_chunk(Chunks* c, int64_t* lo, int64_t* hi) {
  const int64_t a = (int64_t)atomic_fetch_add(&c->next, 1) * c->chunk;
  if (a >= c->n) return 0;
  *lo = a;
  *hi = a + c->chunk < c->n ? a + c->chunk : c->n;
  return 1;
}

#endif
