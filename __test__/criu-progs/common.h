/*
 * Shared by the programs the CRIU tests dump and restore (__test__/criu-*.test.ts).
 *
 * Protocol, in the directory given as argv[1] (absolute path):
 *   ready   written (pid list) once the memory holds its pattern: the test may dump now
 *   go      created by the test after the dump; every process polls for it every ms
 *   result  written by the root process after the restore: "ok" or "FAIL <first wrong address ...>",
 *           then key=value lines (timings); opened only after the restore
 * The root also exits 0 only if every byte of every process was right. A process that never sees
 * "go" gives up after ~2 minutes of polling (a stray program never outlives a failed test long).
 *
 * Memory pattern: page `pg` of a region tagged `tag` is one of
 *   DATA  every 8-byte word = word_at(tag, byte offset in the region, seed)
 *   HOLE  never touched before the dump (not in the checkpoint): reads zeros after the restore
 *   ZERO  only read before the dump (the shared zero page): reads zeros after the restore
 * so both data pages and the daemon's zero-fill are checked, every byte.
 */
#include "../../ts/bench/criu/progs.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MiB (1UL << 20)

static uint64_t g_seed = 1;
/* The first mismatch this process found (one line), empty if none. */
static char g_fail[512];

static inline uint64_t word_at(uint64_t tag, uint64_t off, uint64_t seed) {
  return mix64(seed ^ (tag << 40) ^ off) | 1; /* never 0: a zero-filled page never passes for data */
}

enum { PG_DATA, PG_HOLE, PG_ZERO };

static inline int page_kind(uint64_t tag, uint64_t pg) {
  uint64_t h = mix64((tag << 32) ^ pg ^ 0x5a5a) % 29;
  return h == 0 ? PG_HOLE : h == 1 ? PG_ZERO : PG_DATA;
}

static int g_fail_lock; /* threads may fail at once */

static UNUSED void fail(const char *fmt, ...) {
  while (__atomic_exchange_n(&g_fail_lock, 1, __ATOMIC_ACQUIRE)) {
  }
  if (!g_fail[0]) { /* keep the first */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_fail, sizeof g_fail, fmt, ap);
    va_end(ap);
    fprintf(stderr, "[pid %d] %s\n", (int)getpid(), g_fail);
  }
  __atomic_store_n(&g_fail_lock, 0, __ATOMIC_RELEASE);
}

static UNUSED int failed(void) {
  return __atomic_load_n(&g_fail[0], __ATOMIC_ACQUIRE) != 0;
}

/* Writes the pattern of `tag` into `len` bytes at `p` (len a multiple of PAGE). */
static UNUSED void fill_region(volatile uint64_t *p, size_t len, uint64_t tag) {
  for (size_t pg = 0; pg < len / PAGE; pg++) {
    volatile uint64_t *w = p + pg * (PAGE / 8);
    switch (page_kind(tag, pg)) {
      case PG_DATA:
        for (size_t i = 0; i < PAGE / 8; i++) w[i] = word_at(tag, pg * PAGE + i * 8, g_seed);
        break;
      case PG_ZERO:
        (void)w[0]; /* read fault: the zero page */
        break;
      default:
        break;
    }
  }
}

/* The expected word at byte offset `off` of a region tagged `tag`. */
static inline uint64_t expected_word(uint64_t tag, uint64_t off) {
  return page_kind(tag, off / PAGE) == PG_DATA ? word_at(tag, off, g_seed) : 0;
}

/* Checks every byte of `npages` pages from page `first` of a region mapped at `base`, against
 * want(ctx, byte offset in the region). Returns 0 if all are right, else records the first wrong
 * address. */
static UNUSED int check_with(const char *what, const volatile uint64_t *base, size_t first, size_t npages,
                             uint64_t (*want)(const void *ctx, uint64_t off), const void *ctx) {
  for (size_t pg = first; pg < first + npages; pg++) {
    const volatile uint64_t *w = base + pg * (PAGE / 8);
    for (size_t i = 0; i < PAGE / 8; i++) {
      uint64_t off = pg * PAGE + i * 8;
      uint64_t exp = want(ctx, off), got = w[i];
      if (got != exp) {
        fail("%s: wrong word at %p (region offset 0x%" PRIx64 "): got 0x%016" PRIx64 " want 0x%016" PRIx64, what,
             (void *)&w[i], off, got, exp);
        return -1;
      }
    }
  }
  return 0;
}

static uint64_t want_tag(const void *ctx, uint64_t off) { return expected_word(*(const uint64_t *)ctx, off); }

/* Checks `npages` pages of the region tagged `tag` from page `first`, mapped at `base` (the region's
 * start), against the pattern. */
static UNUSED int check_pages(const char *what, const volatile uint64_t *base, uint64_t tag, size_t first, size_t npages) {
  return check_with(what, base, first, npages, want_tag, &tag);
}

static UNUSED int check_region(const char *what, const volatile uint64_t *p, size_t len, uint64_t tag) {
  return check_pages(what, p, tag, 0, len / PAGE);
}

/* Every byte of [p, p+len) is 0. */
static UNUSED int check_zero(const char *what, const volatile uint64_t *p, size_t len) {
  for (size_t i = 0; i < len / 8; i++) {
    if (p[i] != 0) {
      fail("%s: wrong word at %p (offset 0x%zx): got 0x%016" PRIx64 " want 0", what, (void *)&p[i], i * 8, p[i]);
      return -1;
    }
  }
  return 0;
}


/* Writes `text` to g_dir/name atomically. */
static UNUSED void write_file(const char *name, const char *text) { write_bytes(name, text, strlen(text)); }

/* Polls for g_dir/go every ms; a dump (freeze, restore) may happen at any point of this wait. */
static UNUSED void wait_for_go(void) { wait_file("go", 120); }

static UNUSED double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static UNUSED void *map_anon(size_t len) {
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  return p;
}

/* Waits for `pid` and folds its exit status into the result: 0 if it exited 0. */
static UNUSED int reap(pid_t pid, const char *who) {
  int st;
  while (waitpid(pid, &st, 0) < 0) {
    if (errno != EINTR) {
      fail("%s (pid %d): waitpid: %s", who, (int)pid, strerror(errno));
      return -1;
    }
  }
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return 0;
  if (WIFEXITED(st)) fail("%s (pid %d) exited %d (its stderr says why)", who, (int)pid, WEXITSTATUS(st));
  else fail("%s (pid %d) killed by signal %d", who, (int)pid, WIFSIGNALED(st) ? WTERMSIG(st) : -1);
  return -1;
}

/* argv[1] = dir, argv[2] = seed (optional). */
static UNUSED void init_args(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s DIR [SEED] ...\n", argv[0]);
    exit(2);
  }
  g_dir = argv[1];
  if (argc > 2) g_seed = strtoull(argv[2], NULL, 0);
}

/* The root's last words: the result file, then the exit status. `extra` are key=value lines. */
static UNUSED int finish(const char *extra) {
  char buf[8192];
  if (g_fail[0]) snprintf(buf, sizeof buf, "FAIL %s\n%s", g_fail, extra ? extra : "");
  else snprintf(buf, sizeof buf, "ok\n%s", extra ? extra : "");
  write_file("result", buf);
  return g_fail[0] ? 1 : 0;
}
