/*
 * Scenario (d): several threads faulting at once. The threads exist at dump time (sleeping in a
 * 1 ms poll); after the restore they start together (barrier) and
 *   1. all read the same pages in the same order (faults on one page from several threads at once),
 *   2. thread k checks every byte of pages pg % T == k (faults all over the region at once),
 * then the main thread checks every byte again.
 *   threads DIR SEED [SIZE_MIB] [THREADS]
 */
#include <pthread.h>

#include "common.h"

#define TAG 40
#define SAME_PAGES 256

static volatile uint64_t *g_mem;
static size_t g_size;
static int g_threads;
static volatile int g_go;
static pthread_barrier_t g_start;
static double g_ms[64];

static void *worker(void *arg) {
  int k = (int)(intptr_t)arg;
  while (!g_go) sleep_ms(1);
  pthread_barrier_wait(&g_start);
  double t0 = now_us();
  size_t npages = g_size / PAGE;
  char what[64];
  snprintf(what, sizeof what, "thread %d: shared pages", k);
  for (size_t j = 0; j < SAME_PAGES && !failed(); j++) check_pages(what, g_mem, TAG, (j * 97) % npages, 1);
  snprintf(what, sizeof what, "thread %d: own pages", k);
  for (size_t pg = k; pg < npages && !failed(); pg += g_threads) check_pages(what, g_mem, TAG, pg, 1);
  g_ms[k] = (now_us() - t0) / 1000;
  return NULL;
}

int main(int argc, char **argv) {
  init_args(argc, argv);
  g_size = (argc > 3 ? strtoul(argv[3], NULL, 0) : 32) * MiB;
  g_threads = argc > 4 ? atoi(argv[4]) : 4;
  if (g_threads < 1 || g_threads > 64) g_threads = 4;
  g_mem = map_anon(g_size);
  fill_region(g_mem, g_size, TAG);
  pthread_barrier_init(&g_start, NULL, g_threads);
  pthread_t th[64];
  for (int k = 0; k < g_threads; k++)
    if (pthread_create(&th[k], NULL, worker, (void *)(intptr_t)k)) die("pthread_create");

  char ready[64];
  snprintf(ready, sizeof ready, "%d\n", (int)getpid());
  write_file("ready", ready);
  wait_for_go();
  g_go = 1;
  for (int k = 0; k < g_threads; k++) pthread_join(th[k], NULL);
  check_region("main thread: whole region", g_mem, g_size, TAG);

  char extra[64 * 32] = "", *e = extra;
  for (int k = 0; k < g_threads; k++) e += sprintf(e, "thread%d_ms=%.1f\n", k, g_ms[k]);
  return finish(extra);
}
