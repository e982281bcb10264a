/* The guest's vDSO: clock_gettime, gettimeofday, time, getcpu and clock_getres without
 * a VM exit, from the guest's TSC and the parameters the VMM keeps in the data page at
 * VVAR_ADDR (identity-mapped guest memory: a fixed address, no relocation). Clocks it
 * does not handle, and any call while the page says the TSC is unusable, fall back to
 * the real system call, as Linux's vDSO does. Built by crates/vmm/build.rs. */
#include "vdso.h"

struct timespec_ {
  long tv_sec;
  long tv_nsec;
};
struct timeval_ {
  long tv_sec;
  long tv_usec;
};

#define CLOCK_REALTIME 0
#define CLOCK_MONOTONIC 1
#define CLOCK_REALTIME_COARSE 5
#define CLOCK_MONOTONIC_COARSE 6

#define SYS_gettimeofday 96
#define SYS_time 201
#define SYS_clock_gettime 228
#define SYS_clock_getres 229
#define SYS_getcpu 309

#define barrier() __asm__ __volatile__("" ::: "memory")

static long syscall2(long nr, long a, long b) {
  long ret;
  __asm__ __volatile__("syscall"
                       : "=a"(ret)
                       : "a"(nr), "D"(a), "S"(b)
                       : "rcx", "r11", "memory");
  return ret;
}

static long syscall3(long nr, long a, long b, long c) {
  long ret;
  __asm__ __volatile__("syscall"
                       : "=a"(ret)
                       : "a"(nr), "D"(a), "S"(b), "d"(c)
                       : "rcx", "r11", "memory");
  return ret;
}

static inline unsigned long long rdtsc_ordered(void) {
  unsigned int lo, hi;
  /* lfence: the TSC is read after the loads before it (Linux's rdtsc_ordered). */
  __asm__ __volatile__("lfence; rdtsc" : "=a"(lo), "=d"(hi)::"memory");
  return ((unsigned long long)hi << 32) | lo;
}

/* Reads CLOCK_REALTIME (realtime != 0) or CLOCK_MONOTONIC in ns; 0 if the page is not
 * usable. */
static unsigned long long read_ns(int realtime) {
  const volatile struct vvar *v = (const volatile struct vvar *)VVAR_ADDR;
  unsigned int seq;
  unsigned long long ns;
  do {
    seq = v->seq;
    barrier();
    if (seq & 1) continue;
    if (v->magic != VVAR_MAGIC || !(v->flags & VVAR_VALID)) return 0;
    unsigned long long base = realtime ? v->realtime_ns : v->monotonic_ns;
    unsigned long long tsc_base = v->tsc_base;
    unsigned long long mult = v->mult;
    unsigned int shift = v->shift;
    unsigned long long tsc = rdtsc_ordered();
    /* A TSC below the base (never on one vCPU) reads as the base. */
    unsigned long long delta = tsc > tsc_base ? tsc - tsc_base : 0;
    ns = base + (unsigned long long)(((unsigned __int128)delta * mult) >> shift);
    barrier();
    if (v->seq == seq) return ns;
  } while (1);
}

static int handled(long clock) {
  return clock == CLOCK_REALTIME || clock == CLOCK_MONOTONIC ||
         clock == CLOCK_REALTIME_COARSE || clock == CLOCK_MONOTONIC_COARSE;
}

int __vdso_clock_gettime(long clock, struct timespec_ *ts) {
  if (handled(clock)) {
    int realtime = clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE;
    unsigned long long ns = read_ns(realtime);
    if (ns) {
      ts->tv_sec = (long)(ns / 1000000000ULL);
      ts->tv_nsec = (long)(ns % 1000000000ULL);
      return 0;
    }
  }
  return (int)syscall2(SYS_clock_gettime, clock, (long)ts);
}

int __vdso_gettimeofday(struct timeval_ *tv, void *tz) {
  if (tz == 0) {
    unsigned long long ns = read_ns(1);
    if (ns) {
      if (tv) {
        tv->tv_sec = (long)(ns / 1000000000ULL);
        tv->tv_usec = (long)(ns % 1000000000ULL / 1000);
      }
      return 0;
    }
  }
  return (int)syscall2(SYS_gettimeofday, (long)tv, (long)tz);
}

long __vdso_time(long *t) {
  unsigned long long ns = read_ns(1);
  if (!ns) return syscall2(SYS_time, (long)t, 0);
  long s = (long)(ns / 1000000000ULL);
  if (t) *t = s;
  return s;
}

/* One vCPU: the guest always runs on CPU 0 of node 0. */
long __vdso_getcpu(unsigned *cpu, unsigned *node, void *unused) {
  (void)unused;
  if (cpu) *cpu = 0;
  if (node) *node = 0;
  return 0;
}

int __vdso_clock_getres(long clock, struct timespec_ *res) {
  if (clock == CLOCK_REALTIME || clock == CLOCK_MONOTONIC) {
    if (res) {
      res->tv_sec = 0;
      res->tv_nsec = 1;
    }
    return 0;
  }
  return (int)syscall3(SYS_clock_getres, clock, (long)res, 0);
}

/* The names without the prefix, as Linux's vDSO exports them too. */
int clock_gettime(long, struct timespec_ *) __attribute__((weak, alias("__vdso_clock_gettime")));
int gettimeofday(struct timeval_ *, void *) __attribute__((weak, alias("__vdso_gettimeofday")));
long time(long *) __attribute__((weak, alias("__vdso_time")));
long getcpu(unsigned *, unsigned *, void *) __attribute__((weak, alias("__vdso_getcpu")));
int clock_getres(long, struct timespec_ *) __attribute__((weak, alias("__vdso_clock_getres")));
