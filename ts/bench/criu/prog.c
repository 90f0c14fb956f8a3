/*
 * The program `lazy-pages bench --criu` dumps and restores: a user's process with a known memory
 * pattern. Built with gcc by ts/bench/criu/compile.ts.
 *
 *   prog DIR single|tree SIZE_BYTES TOUCHES PATTERN_SEED
 *
 * single: one process maps SIZE bytes of private anonymous memory. tree: a root, its child and its
 * grandchild each map SIZE/3 (rounded down to pages) of their own, and each does TOUCHES/3 touches.
 * Every 8-byte word of a process's region gets pattern(tag, byte offset) (never 0, so a page the
 * daemon left zero-filled, or a page at the wrong address, can never pass).
 *
 * Protocol, in DIR (an absolute path):
 *   ready          written by the root once every process has its pattern: "PID PID PID" (dump now)
 *   go             written by the bench after the dump; every process polls for it every ms. Its
 *                  content is the touch seed of this run (one dump is restored many times).
 *   lat-ROLE.bin   after the restore: the first-touch latencies in µs, native doubles, touch order
 *   faulted-ROLE.bin  one byte per touch: 1 if that load faulted (the page was not in yet)
 *   result-ROLE    after the restore, key=value lines (see write_result)
 *   result         the root's last word, after its children are reaped: "ok" or "FAIL ..."
 * Result files are opened only after the restore. A process exits 0 only if every word was right.
 * Before the "go" a process gives up after ~10 minutes (a stray program never lingers for long).
 */
#include "progs.h"

#include <inttypes.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>

static uint64_t g_pattern_seed;

static inline uint64_t pattern(uint64_t tag, uint64_t off) {
  uint64_t x = (g_pattern_seed ^ (tag << 56) ^ off) * 0x9e3779b97f4a7c15ULL;
  return (x ^ (x >> 29)) | 1;
}

/* CRIU restores the program in a time namespace whose CLOCK_MONOTONIC goes on from the dump: only
 * differences of now_ns() mean anything outside. Instants the bench compares with its own clock are
 * taken from CLOCK_REALTIME, which no namespace shifts. */
static uint64_t wall_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Memory the program needs only after the restore: a fresh mapping, never part of the checkpoint. */
static void *fresh(size_t len) {
  void *p = mmap(NULL, len ? len : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  return p;
}

/* Page faults so far. After the restore the region is only read, so its faults are the pages no
 * daemon had copied yet when they were first read: the daemon served them on demand. Counted the
 * same way for either daemon (plus a few faults on the fresh mappings of run_after_restore). */
static long faults(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt + ru.ru_majflt;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

struct region {
  volatile uint64_t *mem;
  size_t size;
  uint64_t tag;
};

static struct region map_and_fill(size_t size, uint64_t tag) {
  struct region r = {NULL, size, tag};
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  r.mem = p;
  for (size_t i = 0; i < size / 8; i++) r.mem[i] = pattern(tag, i * 8);
  return r;
}

/* After the restore: timed first touches, then every word checked; writes lat-ROLE.bin and
 * result-ROLE. Returns the number of wrong words. */
static uint64_t run_after_restore(struct region r, int role, size_t touches) {
  uint64_t resumed_wall_ns = wall_ns();
  char path[4096], buf[64] = {0};
  path_of(path, sizeof path, "go");
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("open go");
  if (read(fd, buf, sizeof buf - 1) < 0) die("read go");
  close(fd);
  uint64_t seed = strtoull(buf, NULL, 0) * 0x100000001b3ULL + (uint64_t)role + 1;

  size_t npages = r.size / PAGE;
  if (touches > npages) touches = npages;
  unsigned char *seen = fresh(npages);
  double *lat = fresh(touches * sizeof(double));
  uint64_t wrong = 0, first_wrong_off = 0, first_got = 0;

  /* N distinct random pages; each first touch is one load, timed. The fault counter read just
   * around it says whether that load faulted (nothing else in that window can fault). */
  unsigned char *faulted = fresh(touches);
  uint64_t t_touch0 = now_ns(), x = seed;
  size_t done = 0;
  while (done < touches) {
    uint64_t off = next_random_word(&x, seen, npages);
    long f0 = faults();
    uint64_t t0 = now_ns();
    uint64_t got = r.mem[off / 8];
    uint64_t t1 = now_ns();
    long f1 = faults();
    faulted[done] = f1 != f0;
    lat[done++] = (double)(t1 - t0) / 1000.0;
    if (got != pattern(r.tag, off) && wrong++ == 0) first_wrong_off = off, first_got = got;
  }
  uint64_t t_touch1 = now_ns();
  long mf1 = faults();
  size_t touch_faults = 0;
  for (size_t i = 0; i < done; i++) touch_faults += faulted[i];

  /* Every word. */
  uint64_t t_read0 = now_ns();
  for (size_t i = 0; i < r.size / 8; i++) {
    uint64_t got = r.mem[i];
    if (got != pattern(r.tag, i * 8) && wrong++ == 0) first_wrong_off = i * 8, first_got = got;
  }
  uint64_t t_read1 = now_ns();
  long mf2 = faults();

  char name[64];
  snprintf(name, sizeof name, "lat-%d.bin", role);
  write_bytes(name, lat, done * sizeof(double));
  snprintf(name, sizeof name, "faulted-%d.bin", role);
  write_bytes(name, faulted, done);
  double sum = 0;
  for (size_t i = 0; i < done; i++) sum += lat[i];
  qsort(lat, done, sizeof *lat, cmp_double);
  char text[2048];
  int n = snprintf(text, sizeof text,
                   "pid=%d\nrole=%d\nsize=%zu\ntouches=%zu\nresumed_wall_ns=%" PRIu64 "\ntouch_loop_ms=%.3f\ntouch_sum_ms=%.3f\n"
                   "touch_p50_us=%.2f\ntouch_p99_us=%.2f\ntouch_p999_us=%.2f\ntouch_max_us=%.2f\nfull_read_ms=%.3f\n"
                   "done_wall_ns=%" PRIu64 "\ntouch_faults=%zu\nread_faults=%ld\nwrong_words=%" PRIu64 "\n",
                   (int)getpid(), role, r.size, done, resumed_wall_ns, (t_touch1 - t_touch0) / 1e6, sum / 1000.0,
                   done ? lat[done / 2] : 0.0, done ? lat[(done * 99) / 100] : 0.0, done ? lat[(done * 999) / 1000] : 0.0,
                   done ? lat[done - 1] : 0.0, (t_read1 - t_read0) / 1e6, wall_ns(), touch_faults, mf2 - mf1, wrong);
  if (wrong)
    snprintf(text + n, sizeof text - n, "first_wrong=offset 0x%" PRIx64 " of %p: got 0x%016" PRIx64 " want 0x%016" PRIx64 "\n",
             first_wrong_off, (void *)r.mem, first_got, pattern(r.tag, first_wrong_off));
  snprintf(name, sizeof name, "result-%d", role);
  write_bytes(name, text, strlen(text));
  if (wrong) fprintf(stderr, "[pid %d] %" PRIu64 " wrong words, first at offset 0x%" PRIx64 "\n", (int)getpid(), wrong, first_wrong_off);
  return wrong;
}

/* A child dies with its parent (before the dump: a killed bench leaves nothing behind; CRIU keeps
 * the setting across the restore). */
static void die_with_parent(pid_t parent) {
  if (prctl(PR_SET_PDEATHSIG, SIGKILL)) die("prctl");
  if (getppid() != parent) exit(4);
}

static int reap(pid_t pid) {
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

int main(int argc, char **argv) {
  if (argc != 6 || (strcmp(argv[2], "single") && strcmp(argv[2], "tree"))) {
    fprintf(stderr, "usage: %s DIR single|tree SIZE_BYTES TOUCHES PATTERN_SEED\n", argv[0]);
    return 2;
  }
  g_dir = argv[1];
  int tree = !strcmp(argv[2], "tree");
  size_t size = strtoull(argv[3], NULL, 0), touches = strtoull(argv[4], NULL, 0);
  g_pattern_seed = strtoull(argv[5], NULL, 0);
  if (tree) size /= 3, touches /= 3;
  size &= ~(PAGE - 1);
  if (size < PAGE) {
    fprintf(stderr, "size too small\n");
    return 2;
  }

  int role = 0;
  pid_t kid = 0;
  if (tree) {
    pid_t root = getpid();
    kid = fork();
    if (kid < 0) die("fork");
    if (kid == 0) {
      die_with_parent(root);
      role = 1;
      pid_t child = getpid();
      kid = fork();
      if (kid < 0) die("fork");
      if (kid == 0) {
        die_with_parent(child);
        role = 2;
      }
    }
  }
  struct region r = map_and_fill(size, (uint64_t)role + 1);
  char name[64], text[64];
  if (tree && role > 0) {
    snprintf(name, sizeof name, "ready-%d", role);
    snprintf(text, sizeof text, "%d", (int)getpid());
    write_bytes(name, text, strlen(text));
  }
  if (role == 0) {
    char pids[256];
    int n = snprintf(pids, sizeof pids, "%d", (int)getpid());
    if (tree) {
      for (int i = 1; i <= 2; i++) {
        snprintf(name, sizeof name, "ready-%d", i);
        wait_file(name, 600);
        char p[4096], b[32] = {0};
        path_of(p, sizeof p, name);
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || read(fd, b, sizeof b - 1) < 0) die("read ready");
        close(fd);
        n += snprintf(pids + n, sizeof pids - n, " %s", b);
      }
    }
    snprintf(pids + n, sizeof pids - n, "\n");
    write_bytes("ready", pids, strlen(pids));
  }
  wait_file("go", 600);

  uint64_t wrong = run_after_restore(r, role, touches);
  int bad = wrong != 0;
  if (kid > 0 && reap(kid)) bad = 1;
  if (role == 0) {
    const char *res = bad ? "FAIL\n" : "ok\n";
    write_bytes("result", res, strlen(res));
  }
  return bad ? 1 : 0;
}
