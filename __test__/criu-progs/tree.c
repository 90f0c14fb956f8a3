/*
 * Scenario (c): a 3-process tree (root -> child -> grandchild), each checking its own memory.
 * Before the dump: the root fills a region S and forks; every process then fills a private region
 * of its own (tag 21 + role) and overwrites its share of S (pages with pg % 4 == role + 1) with a
 * pattern of its own, so S is partly shared copy-on-write and partly different in each process.
 * After the restore each process checks every byte of its private region and of S (as it sees it);
 * parents reap their children; the root writes the result.
 *   tree DIR SEED [SIZE_MIB]
 */
#include "common.h"

#define TAG_S 20

struct s_ctx {
  int role;
};

/* The word at `off` of S as process `role` (0 root, 1 child, 2 grandchild) sees it. */
static uint64_t want_s(const void *ctx, uint64_t off) {
  int role = ((const struct s_ctx *)ctx)->role;
  if ((off / PAGE) % 4 == (uint64_t)role + 1) return word_at(30 + role, off, g_seed);
  return expected_word(TAG_S, off);
}

static void make_own(volatile uint64_t *s, size_t size, int role) {
  for (size_t pg = role + 1; pg < size / PAGE; pg += 4)
    for (size_t i = 0; i < PAGE / 8; i++) s[pg * (PAGE / 8) + i] = word_at(30 + role, pg * PAGE + i * 8, g_seed);
}

static void check_mine(const char *who, volatile uint64_t *s, volatile uint64_t *own, size_t size, int role) {
  char what[128];
  struct s_ctx c = {role};
  snprintf(what, sizeof what, "%s: private region", who);
  check_region(what, own, size, 21 + role);
  snprintf(what, sizeof what, "%s: region S", who);
  check_with(what, s, 0, size / PAGE, want_s, &c);
}

static void announce(const char *role) {
  char name[64], text[64];
  snprintf(name, sizeof name, "ready-%s", role);
  snprintf(text, sizeof text, "%d\n", (int)getpid());
  write_file(name, text);
}

/* A child or grandchild: its own region and its pages of S, then, after the restore, checks both
 * (and reaps its own child, if it has one). Never returns. */
static void descendant(const char *who, volatile uint64_t *s, size_t size, int role, pid_t own_child) {
  volatile uint64_t *own = map_anon(size);
  fill_region(own, size, 21 + role);
  make_own(s, size, role);
  announce(who);
  wait_for_go();
  check_mine(who, s, own, size, role);
  if (own_child > 0) reap(own_child, "grandchild");
  _exit(failed() ? 1 : 0);
}

int main(int argc, char **argv) {
  init_args(argc, argv);
  size_t size = (argc > 3 ? strtoul(argv[3], NULL, 0) : 4) * MiB;
  volatile uint64_t *s = map_anon(size);
  fill_region(s, size, TAG_S);

  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    pid_t grandchild = fork();
    if (grandchild < 0) die("fork");
    if (grandchild == 0) descendant("grandchild", s, size, 2, -1);
    descendant("child", s, size, 1, grandchild);
  }
  volatile uint64_t *own = map_anon(size);
  fill_region(own, size, 21);
  make_own(s, size, 0);
  wait_file("ready-child", 60);
  wait_file("ready-grandchild", 60);
  char ready[64];
  snprintf(ready, sizeof ready, "%d\n", (int)getpid());
  write_file("ready", ready);
  wait_for_go();
  check_mine("root", s, own, size, 0);
  reap(child, "child");
  return finish(NULL);
}
