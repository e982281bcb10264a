/* The data page the VMM keeps for the guest's vDSO (`crates/vmm/src/vdso.rs` writes it:
 * keep the two layouts identical). All fields little-endian, at VVAR_ADDR in guest memory.
 *
 * Clock readings: ns = base + ((tsc - tsc_base) * mult) >> shift, with tsc the guest's
 * time-stamp counter. The VMM changes the page only with `seq` odd (a seqlock): a reader
 * that sees `seq` odd, or different before and after its reads, reads again. */
#ifndef REAP_VDSO_H
#define REAP_VDSO_H

#define VVAR_ADDR 0xd000UL
#define VVAR_MAGIC 0x5241565650414552ULL /* "REAPVVAR" */

struct vvar {
  unsigned int seq;
  unsigned int flags; /* VVAR_VALID: the TSC fields may be used */
  unsigned long long magic;
  unsigned long long tsc_base;
  unsigned long long mult;
  unsigned int shift;
  unsigned int pad;
  unsigned long long realtime_ns; /* CLOCK_REALTIME at tsc_base, ns since the epoch */
  unsigned long long monotonic_ns; /* CLOCK_MONOTONIC at tsc_base */
  /* The VMM's own field (the vDSO does not read it): guest CLOCK_MONOTONIC minus the
   * host's. */
  long long monotonic_offset_ns;
};

#define VVAR_VALID 1u

#endif
