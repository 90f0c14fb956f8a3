/*
 * Test peer for the uffd-native tests: plays a restored task. It maps an anonymous region, registers it with a
 * userfaultfd (features 0x4E, as CRIU's restorer does), hands the fd over on a unix socket exactly as CRIU does
 * (int32 pid, then a 1-byte sendmsg carrying the fd with SCM_RIGHTS, then u32 0x52535446), closes its own copy,
 * and then obeys one command per stdin line so the test can fault pages and change the layout on demand.
 *
 * usage: peer <socket> <addr-hex> <npages>        normal hand-over (prints "ready")
 *        peer <socket> truncated                   connects, writes 2 bytes of a pid, exits
 *        peer <socket> nofd                        sends a pid then a byte without an fd, exits
 * commands: sum I | hex I | write I B | fork | remap I N TOHEX | sumat HEX | dontneed I N | unmap I N | exit
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#define PAGE 4096UL

static void die(const char *what) {
  perror(what);
  exit(2);
}

static int connect_to(const char *path) {
  int s = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  if (s < 0) die("socket");
  strncpy(a.sun_path, path, sizeof(a.sun_path) - 1);
  if (connect(s, (struct sockaddr *)&a, sizeof(a)) < 0) die("connect");
  return s;
}

static void send_fd(int s, int fd) {
  char byte = 0;
  struct iovec iov = {.iov_base = &byte, .iov_len = 1};
  union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
  if (fd >= 0) {
    mh.msg_control = u.buf;
    mh.msg_controllen = sizeof(u.buf);
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
  }
  if (sendmsg(s, &mh, 0) != 1) die("sendmsg");
}

/* FNV-1a 64 over one page: the test computes the same over the expected bytes. */
static uint64_t fnv(const unsigned char *p) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < PAGE; i++) { h ^= p[i]; h *= 0x100000001b3ULL; }
  return h;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 3 && strcmp(argv[2], "truncated") == 0) {
    int s = connect_to(argv[1]);
    if (write(s, "\x01\x02", 2) != 2) die("write");
    return 0;
  }
  if (argc == 3 && strcmp(argv[2], "nofd") == 0) {
    int s = connect_to(argv[1]);
    int32_t pid = getpid();
    if (write(s, &pid, 4) != 4) die("write");
    send_fd(s, -1);
    sleep(5);
    return 0;
  }
  if (argc != 4) { fprintf(stderr, "usage: peer <socket> <addr-hex> <npages>\n"); return 2; }
  unsigned long addr = strtoul(argv[2], NULL, 16), n = strtoul(argv[3], NULL, 10);
  unsigned char *base = mmap((void *)addr, n * PAGE, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (base == MAP_FAILED || (unsigned long)base != addr) die("mmap");
  int u = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (u < 0) die("userfaultfd");
  struct uffdio_api api = {.api = UFFD_API, .features = 0x4E};
  if (ioctl(u, UFFDIO_API, &api) < 0) die("UFFDIO_API");
  struct uffdio_register reg = {.range = {.start = addr, .len = n * PAGE}, .mode = UFFDIO_REGISTER_MODE_MISSING};
  if (ioctl(u, UFFDIO_REGISTER, &reg) < 0) die("UFFDIO_REGISTER");
  int s = connect_to(argv[1]);
  int32_t pid = getpid();
  if (write(s, &pid, 4) != 4) die("write pid");
  send_fd(s, u);
  uint32_t fin = 0x52535446;
  if (write(s, &fin, 4) != 4) die("write finished");
  close(u);
  printf("ready %d\n", getpid());

  char line[256];
  while (fgets(line, sizeof(line), stdin)) {
    char cmd[32] = {0};
    unsigned long a = 0, b = 0, c = 0;
    sscanf(line, "%31s %lx %lx %lx", cmd, &a, &b, &c);
    if (!strcmp(cmd, "sum")) {
      printf("sum %lx %016llx\n", a, (unsigned long long)fnv(base + a * PAGE));
    } else if (!strcmp(cmd, "sumat")) {
      printf("sumat %016llx\n", (unsigned long long)fnv((unsigned char *)a));
    } else if (!strcmp(cmd, "hex")) {
      printf("hex ");
      for (size_t i = 0; i < PAGE; i++) printf("%02x", base[a * PAGE + i]);
      printf("\n");
    } else if (!strcmp(cmd, "write")) {
      memset(base + a * PAGE, (int)b, PAGE);
      printf("ok\n");
    } else if (!strcmp(cmd, "fork")) {
      pid_t child = fork();
      if (child == 0) { for (;;) pause(); }
      printf("child %d\n", child);
    } else if (!strcmp(cmd, "remap")) {
      void *r = mremap(base + a * PAGE, b * PAGE, b * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)c);
      if (r == MAP_FAILED) die("mremap");
      printf("ok\n");
    } else if (!strcmp(cmd, "dontneed")) {
      if (madvise(base + a * PAGE, b * PAGE, MADV_DONTNEED) < 0) die("madvise");
      printf("ok\n");
    } else if (!strcmp(cmd, "unmap")) {
      if (munmap(base + a * PAGE, b * PAGE) < 0) die("munmap");
      printf("ok\n");
    } else if (!strcmp(cmd, "exit")) {
      return 0;
    } else {
      printf("unknown %s\n", cmd);
    }
  }
  return 0;
}
