/*
 * What every C program CRIU dumps and restores for us shares: the bench's prog.c and the test
 * programs (__test__/criu-progs/common.h includes this file). Process plumbing only: dying with a
 * reason, the mixer behind the memory patterns, the clock, and files in the program's directory
 * (g_dir), written atomically because the bench and the tests poll for them.
 */
#ifndef LAZY_PAGES_PROGS_H
#define LAZY_PAGES_PROGS_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define UNUSED __attribute__((unused))
#define PAGE 4096UL

/* The directory given on the command line: the program's files live there. */
static const char *g_dir = ".";

static UNUSED void die(const char *what) {
  fprintf(stderr, "[pid %d] %s: %s\n", (int)getpid(), what, strerror(errno));
  exit(2);
}

/* splitmix64's finaliser: the patterns and the random touches are made from it. */
static inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/* CLOCK_MONOTONIC in ns. After a restore it runs on in CRIU's time namespace from the dump: only
 * differences mean anything outside the program. */
static UNUSED uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static UNUSED void path_of(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", g_dir, name); }

/* Writes `len` bytes to g_dir/name atomically (tmp + rename): a reader never sees half of it. */
static UNUSED void write_bytes(const char *name, const void *data, size_t len) {
  char path[4096], tmp[4200];
  path_of(path, sizeof path, name);
  snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) die("open");
  size_t done = 0;
  while (done < len) {
    ssize_t n = write(fd, (const char *)data + done, len - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("write");
    }
    done += (size_t)n;
  }
  if (close(fd)) die("close");
  if (rename(tmp, path)) die("rename");
}

static UNUSED void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) && errno == EINTR) {
  }
}

/* Polls every ms for g_dir/name (a dump may freeze and restore the program at any point of it);
 * gives up after `give_up_s` seconds, so a stray program never outlives a failed run for long. */
static UNUSED void wait_file(const char *name, long give_up_s) {
  char path[4096];
  path_of(path, sizeof path, name);
  for (long i = 0; access(path, F_OK) != 0; i++) {
    if (i > give_up_s * 1000) {
      fprintf(stderr, "[pid %d] no '%s' after ~%ld s: giving up\n", (int)getpid(), name, give_up_s);
      exit(3);
    }
    sleep_ms(1);
  }
}

/* The next of a series of distinct random pages out of `npages` (`seen` marks those taken; the
 * caller asks for no more than npages) and a random word in it: returns the word's byte offset. `x`
 * is the generator's state. */
static UNUSED uint64_t next_random_word(uint64_t *x, unsigned char *seen, size_t npages) {
  for (;;) {
    *x = mix64(*x);
    size_t pg = *x % npages;
    if (seen[pg]) continue;
    seen[pg] = 1;
    return pg * PAGE + ((*x >> 40) % (PAGE / 8)) * 8;
  }
}

#endif
