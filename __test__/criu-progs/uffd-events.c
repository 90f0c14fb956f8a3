/*
 * Scenario (b): the userfaultfd events, in a parent and its child (after CRIU's "uffd-events").
 * Five 1 MiB private anonymous maps of known data, each followed by a 1 MiB PROT_NONE gap (so they
 * stay separate VMAs and map 2 cannot grow in place). After the restore:
 *   read map 0 (faults); fork; then parent and child at once, each on its own copy:
 *   map 0 again; map 1: a few pages read, then madvise(DONTNEED) -> every byte reads 0;
 *   map 2: a few pages read, mremap to twice its size (MAYMOVE) -> the old data moved, new half 0;
 *   maps 3 and 4: a few pages read, swapped through three mremap(MAYMOVE|FIXED) -> data follows.
 *   uffd-events DIR SEED
 */
#include "common.h"

#define NMAPS 5
#define TAG0 10

static void sequence(const char *who, volatile uint64_t *m[NMAPS]) {
  char what[128];
#define WHAT(s) (snprintf(what, sizeof what, "%s: %s", who, s), what)
  check_region(WHAT("map 0"), m[0], MiB, TAG0);

  /* DONTNEED over partly fetched, partly lazy pages: all zeros afterwards. */
  check_pages(WHAT("map 1 before DONTNEED"), m[1], TAG0 + 1, 0, 32);
  if (madvise((void *)m[1], MiB, MADV_DONTNEED)) die("madvise");
  check_zero(WHAT("map 1 after DONTNEED"), m[1], MiB);

  /* Grow and move: the old data follows, the new half is zero. */
  check_pages(WHAT("map 2 before mremap"), m[2], TAG0 + 2, 64, 16);
  void *n2 = mremap((void *)m[2], MiB, 2 * MiB, MREMAP_MAYMOVE);
  if (n2 == MAP_FAILED) die("mremap grow");
  if (n2 == (void *)m[2]) fail("%s: map 2 grew in place (the test meant it to move)", who);
  m[2] = n2;
  check_region(WHAT("map 2 after mremap (old half)"), m[2], MiB, TAG0 + 2);
  check_zero(WHAT("map 2 after mremap (new half)"), m[2] + MiB / 8, MiB);

  /* Swap maps 3 and 4 through a temporary spot: three moves. */
  check_pages(WHAT("map 3 before swap"), m[3], TAG0 + 3, 128, 8);
  check_pages(WHAT("map 4 before swap"), m[4], TAG0 + 4, 200, 8);
  void *tmp = mmap(NULL, MiB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (tmp == MAP_FAILED) die("mmap tmp");
  if (mremap((void *)m[3], MiB, MiB, MREMAP_MAYMOVE | MREMAP_FIXED, tmp) == MAP_FAILED) die("mremap 3->tmp");
  if (mremap((void *)m[4], MiB, MiB, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)m[3]) == MAP_FAILED) die("mremap 4->3");
  if (mremap(tmp, MiB, MiB, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)m[4]) == MAP_FAILED) die("mremap tmp->4");
  check_region(WHAT("map 4's data at map 3's address"), m[3], MiB, TAG0 + 4);
  check_region(WHAT("map 3's data at map 4's address"), m[4], MiB, TAG0 + 3);
#undef WHAT
}

int main(int argc, char **argv) {
  init_args(argc, argv);
  char *area = mmap(NULL, 2 * NMAPS * MiB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (area == MAP_FAILED) die("mmap area");
  volatile uint64_t *m[NMAPS];
  for (int i = 0; i < NMAPS; i++) {
    void *p = mmap(area + 2 * i * MiB, MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) die("mmap map");
    m[i] = p;
    fill_region(m[i], MiB, TAG0 + i);
  }
  char ready[64];
  snprintf(ready, sizeof ready, "%d\n", (int)getpid());
  write_file("ready", ready);
  wait_for_go();

  check_region("parent: map 0 before fork", m[0], MiB, TAG0);
  fflush(stderr);
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    sequence("child", m);
    _exit(failed() ? 1 : 0);
  }
  sequence("parent", m);
  reap(child, "child");
  return finish(NULL);
}
