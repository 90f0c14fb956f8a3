/*
 * rusage OUT PROG ARGS...: runs PROG (fork + exec), waits for it with wait4() and writes to OUT
 *   exit=N signal=N utime_us=N stime_us=N maxrss_kb=N anon_kb=N start_ns=N end_ns=N
 * (times from CLOCK_MONOTONIC, the clock of Node's process.hrtime). SIGINT, SIGTERM and SIGHUP are
 * passed on to PROG; PROG is SIGKILLed if this process dies. Exits with PROG's exit code (128+sig
 * if it was killed). Used by `lazy-pages bench --criu` to measure each daemon's CPU and peak RSS
 * (wait4's rusage includes PROG's own reaped children). anon_kb is PROG's peak anonymous RSS
 * (RssAnon of /proc/PID/status, sampled every 2 ms while it runs): maxrss counts the file pages of
 * its executable and libraries too, which are shared and not what grows with an image.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile pid_t g_child;

static void forward(int sig) {
  if (g_child > 0) kill(g_child, sig);
}

/* RssAnon of `pid` in kB, or -1. */
static long rss_anon_kb(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  long kb = -1;
  while (fgets(line, sizeof line, f)) {
    if (sscanf(line, "RssAnon: %ld", &kb) == 1) break;
  }
  fclose(f);
  return kb;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s OUT PROG [ARGS...]\n", argv[0]);
    return 127;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = forward;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);

  pid_t self = getpid();
  uint64_t start = now_ns();
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    return 127;
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != self) _exit(127);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    execvp(argv[2], argv + 2);
    fprintf(stderr, "rusage: exec %s: %s\n", argv[2], strerror(errno));
    _exit(127);
  }
  g_child = pid;
  /* Inherited descriptors (a status pipe) are the child's alone. */
  for (int fd = 3; fd < 256; fd++) close(fd);

  int st = 0;
  struct rusage ru;
  long anon_peak = 0;
  for (;;) {
    pid_t w = wait4(pid, &st, WNOHANG, &ru);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) {
      perror("wait4");
      return 127;
    }
    long kb = rss_anon_kb(pid);
    if (kb > anon_peak) anon_peak = kb;
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
  }
  uint64_t end = now_ns();
  g_child = 0;
  FILE *f = fopen(argv[1], "w");
  if (!f) {
    perror(argv[1]);
    return 127;
  }
  fprintf(f, "exit=%d signal=%d utime_us=%" PRId64 " stime_us=%" PRId64 " maxrss_kb=%ld anon_kb=%ld start_ns=%" PRIu64 " end_ns=%" PRIu64 "\n",
          WIFEXITED(st) ? WEXITSTATUS(st) : -1, WIFSIGNALED(st) ? WTERMSIG(st) : 0,
          (int64_t)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec, (int64_t)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec,
          ru.ru_maxrss, anon_peak, start, end);
  if (fclose(f)) {
    perror(argv[1]);
    return 127;
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
