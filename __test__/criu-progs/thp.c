/*
 * Scenario (e): a 2 MiB-aligned region with transparent huge pages enabled (MADV_HUGEPAGE), after
 * CRIU's "lazy-thp". After the restore:
 *   1. write faults: the first half of every even page is overwritten while the page is still lazy
 *      (the daemon must still deliver the whole original page under the write);
 *   2. every byte checked: even pages = new first half + original second half, odd pages original;
 *   3. three rounds of: memset the whole region, rewrite every second page, compare every byte.
 * The result also says how much of the region was backed by huge pages before the dump and after.
 *   thp DIR SEED [SIZE_MIB]
 */
#include "common.h"

#define TAG 50
#define HUGE (2 * MiB)

static volatile uint64_t *g_mem;

/* Stage 2: even pages have their first half rewritten with tag 51. */
static uint64_t want_stage2(const void *ctx, uint64_t off) {
  (void)ctx;
  if ((off / PAGE) % 2 == 0 && off % PAGE < PAGE / 2) return word_at(51, off, g_seed);
  return expected_word(TAG, off);
}

struct round {
  unsigned char byte;
  uint64_t tag;
};

static uint64_t want_round(const void *ctx, uint64_t off) {
  const struct round *r = ctx;
  if ((off / PAGE) % 2 == 1) return word_at(r->tag, off, g_seed);
  return 0x0101010101010101ULL * r->byte;
}

/* kB of AnonHugePages in the VMA that starts at `start` (from /proc/self/smaps), and whether that
 * VMA has the huge-page advice ("hg") or its opposite ("nh") in VmFlags. */
static long thp_kb(const void *start, char flag[3]) {
  FILE *f = fopen("/proc/self/smaps", "r");
  if (flag) strcpy(flag, "-");
  if (!f) return -1;
  char line[512];
  int in = 0;
  long kb = -1;
  while (fgets(line, sizeof line, f)) {
    unsigned long a, b;
    if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' ')) {
      in = (a <= (unsigned long)start && (unsigned long)start < b);
      continue;
    }
    if (!in) continue;
    sscanf(line, "AnonHugePages: %ld kB", &kb);
    if (flag && strncmp(line, "VmFlags:", 8) == 0) {
      if (strstr(line, " hg")) strcpy(flag, "hg");
      else if (strstr(line, " nh")) strcpy(flag, "nh");
    }
  }
  fclose(f);
  return kb;
}

int main(int argc, char **argv) {
  init_args(argc, argv);
  size_t size = (argc > 3 ? strtoul(argv[3], NULL, 0) : 16) * MiB;
  char *raw = mmap(NULL, size + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) die("mmap");
  char *aligned = (char *)(((uintptr_t)raw + HUGE - 1) & ~(HUGE - 1));
  /* Keep exactly the aligned part: a VMA of its own. */
  if (aligned > raw) munmap(raw, aligned - raw);
  if (raw + size + HUGE > aligned + size) munmap(aligned + size, raw + size + HUGE - (aligned + size));
  if (madvise(aligned, size, MADV_HUGEPAGE)) die("madvise(MADV_HUGEPAGE)");
  g_mem = (volatile uint64_t *)aligned;
  fill_region(g_mem, size, TAG);
  char flag_before[3], flag_after[3];
  long before = thp_kb(aligned, flag_before);

  char ready[64];
  snprintf(ready, sizeof ready, "%d\n", (int)getpid());
  write_file("ready", ready);
  wait_for_go();

  /* 1. write faults on lazy pages */
  for (size_t pg = 0; pg < size / PAGE; pg += 2)
    for (size_t i = 0; i < PAGE / 16; i++) g_mem[pg * (PAGE / 8) + i] = word_at(51, pg * PAGE + i * 8, g_seed);
  /* 2. every byte */
  check_with("after write faults", g_mem, 0, size / PAGE, want_stage2, NULL);
  long after = thp_kb(aligned, flag_after);
  /* 3. lazy-thp rounds */
  for (int n = 0; n < 3 && !failed(); n++) {
    struct round r = {(unsigned char)(0x5c + n), 52 + n};
    memset((void *)g_mem, r.byte, size);
    for (size_t pg = 1; pg < size / PAGE; pg += 2)
      for (size_t i = 0; i < PAGE / 8; i++) g_mem[pg * (PAGE / 8) + i] = word_at(r.tag, pg * PAGE + i * 8, g_seed);
    char what[64];
    snprintf(what, sizeof what, "memset round %d", n);
    check_with(what, g_mem, 0, size / PAGE, want_round, &r);
  }
  char extra[256];
  snprintf(extra, sizeof extra,
           "thp_kb_before_dump=%ld\nthp_advice_before_dump=%s\nthp_kb_after_restore=%ld\nthp_advice_after_restore=%s\nthp_kb_end=%ld\n",
           before, flag_before, after, flag_after, thp_kb(aligned, NULL));
  return finish(extra);
}
