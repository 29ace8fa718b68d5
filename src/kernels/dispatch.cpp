// Runtime choice of the kernel table: checked once, here, in code compiled for any x86-64.
#include "kernels.hpp"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace assocmem::kernels {

#if defined(ASSOCMEM_HAVE_AVX512)
const Ops* avx512_table();
const Ops* avx512_bf16_table();
const Ops* amx_bf16_table();
NibbleDots avx512bw_nibble_dots_entry();

namespace {
bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
}
bool cpu_has_avx512_bf16() {
  __builtin_cpu_init();
  return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
}
// Linux keeps AMX tile data off until a process asks for it (arch_prctl ARCH_REQ_XCOMP_PERM).
bool amx_permitted() {
#if defined(__linux__)
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  static const bool ok = syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  return ok;
#else
  return false;
#endif
}
// CPUID leaf 7: EDX bit 24 = AMX-TILE, bit 22 = AMX-BF16 (not every compiler's
// __builtin_cpu_supports knows these names).
bool cpuid_amx_bf16() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return ((d >> 24) & 1) && ((d >> 22) & 1);
}
bool cpu_has_amx_bf16() { return cpu_has_avx512_bf16() && cpuid_amx_bf16() && amx_permitted(); }
}  // namespace

const Ops* avx512_ops() { return cpu_has_avx512() ? avx512_table() : nullptr; }
const Ops* avx512_bf16_ops() { return cpu_has_avx512_bf16() ? avx512_bf16_table() : nullptr; }
const Ops* amx_bf16_ops() { return cpu_has_amx_bf16() ? amx_bf16_table() : nullptr; }
NibbleDots avx512bw_nibble_dots() { return cpu_has_avx512() ? avx512bw_nibble_dots_entry() : nullptr; }
#else
NibbleDots avx512bw_nibble_dots() { return nullptr; }
const Ops* avx512_ops() { return nullptr; }
const Ops* avx512_bf16_ops() { return nullptr; }
const Ops* amx_bf16_ops() { return nullptr; }
#endif

}  // namespace assocmem::kernels
