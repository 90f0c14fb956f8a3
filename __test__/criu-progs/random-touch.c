/*
 * Scenario (a): one big region. After the restore: N random pages touched first (each first touch
 * timed: that is one lazy fault), then every byte of the region read and checked.
 *   random-touch DIR SEED SIZE_MIB TOUCHES
 */
#include "common.h"

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  init_args(argc, argv);
  size_t size = (argc > 3 ? strtoul(argv[3], NULL, 0) : 64) * MiB;
  size_t touches = argc > 4 ? strtoul(argv[4], NULL, 0) : 1000;
  size_t npages = size / PAGE;
  if (touches > npages) touches = npages;

  volatile uint64_t *mem = map_anon(size);
  fill_region(mem, size, 1);
  unsigned char *seen = calloc(npages, 1);
  double *lat = calloc(touches, sizeof *lat);
  if (!seen || !lat) die("calloc");

  char ready[64];
  snprintf(ready, sizeof ready, "%d\n", (int)getpid());
  write_file("ready", ready);
  wait_for_go();

  /* Random distinct pages, first touch timed (a read of one word: a fault on a lazy page). */
  uint64_t r = g_seed * 7919 + 17;
  size_t done = 0;
  while (done < touches) {
    uint64_t off = next_random_word(&r, seen, npages);
    double t0 = now_us();
    uint64_t got = mem[off / 8];
    lat[done++] = now_us() - t0;
    if (got != expected_word(1, off)) {
      fail("random touch: wrong word at %p (region offset 0x%" PRIx64 "): got 0x%016" PRIx64 " want 0x%016" PRIx64,
           (void *)&mem[off / 8], off, got, expected_word(1, off));
      break;
    }
  }
  /* Then every byte. */
  double t0 = now_us();
  check_region("full read", mem, size, 1);
  double full_ms = (now_us() - t0) / 1000;

  qsort(lat, done, sizeof *lat, cmp_double);
  char extra[512] = "";
  if (done) {
    snprintf(extra, sizeof extra, "touches=%zu\ntouch_p50_us=%.1f\ntouch_p99_us=%.1f\ntouch_max_us=%.1f\nfull_read_ms=%.1f\n", done,
             lat[done / 2], lat[(done * 99) / 100], lat[done - 1], full_ms);
  }
  return finish(extra);
}
