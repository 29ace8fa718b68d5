// Runtime choice of the kernel table: checked once, here, in code compiled for any x86-64.
#include "kernels.hpp"

#include <cstdlib>
#include <cstring>
#include <string>

#include "assocmem/engine.hpp"
#include "assocmem/error.hpp"

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


const Ops& generic_ops() {
  static const Ops* ops = highway_tables().back().ops;
  return *ops;
}

const Ops* table_named(const char* name) {
  for (const HighwayTable& t : highway_tables())
    if (std::strcmp(t.ops->name, name) == 0) return t.ops;
  for (const Ops* t : {amx_bf16_ops(), avx512_bf16_ops(), avx512_ops()})
    if (t && std::strcmp(t->name, name) == 0) return t;
  return nullptr;
}

namespace {
const char* name_of(KernelChoice k) {
  switch (k) {
    case KernelChoice::Generic: return "generic";
    case KernelChoice::Sse4: return "sse4";
    case KernelChoice::Avx2: return "avx2";
    case KernelChoice::Avx512: return "avx512";
    case KernelChoice::Avx512Bf16: return "avx512_bf16";
    case KernelChoice::AmxBf16: return "amx_bf16";
    case KernelChoice::Neon: return "neon";
    case KernelChoice::Sve: return "sve";
    case KernelChoice::Sve2: return "sve2";
    case KernelChoice::Auto: break;
  }
  return "auto";
}

const Ops& best(bool bf16_store) {
  if (bf16_store) {
    if (const Ops* o = amx_bf16_ops()) return *o;
    if (const Ops* o = avx512_bf16_ops()) return *o;
  }
  if (const Ops* o = avx512_ops()) return *o;
  return *highway_tables().front().ops;
}
}  // namespace

const Ops& choose(KernelChoice choice, bool bf16_store) {
  std::string from = "kernel";
  if (choice == KernelChoice::Auto) {
    const char* env = std::getenv("ASSOCMEM_KERNEL");
    if (!env || !*env) return best(bf16_store);
    try {
      choice = parse_kernel(env);
    } catch (const InvalidArgument& e) {
      throw InvalidArgument(std::string("environment variable ASSOCMEM_KERNEL: ") + e.what());
    }
    if (choice == KernelChoice::Auto) return best(bf16_store);
    from = "kernel '" + std::string(env) + "' (environment variable ASSOCMEM_KERNEL)";
  } else {
    from = "kernel '" + std::string(name_of(choice)) + "'";
  }
  const Ops* o = table_named(name_of(choice));
  ASSOCMEM_CHECK_ARG(o != nullptr, from, " is not available on this CPU or build (available: ",
                     [] {
                       std::string all;
                       for (const std::string& n : available_kernels()) all += (all.empty() ? "" : ", ") + n;
                       return all;
                     }(),
                     ")");
  return *o;
}

}  // namespace assocmem::kernels

namespace assocmem {
std::vector<std::string> available_kernels() {
  std::vector<std::string> names;
  for (const kernels::Ops* t : {kernels::amx_bf16_ops(), kernels::avx512_bf16_ops(), kernels::avx512_ops()})
    if (t) names.emplace_back(t->name);
  for (const kernels::HighwayTable& t : kernels::highway_tables()) names.emplace_back(t.ops->name);
  return names;
}
}  // namespace assocmem
