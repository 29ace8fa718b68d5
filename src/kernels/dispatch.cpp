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

// Hand-written entries (avx512.cpp) where Highway 1.0.3 has no operation for the instruction.
#if defined(ASSOCMEM_HAVE_AVX512)
void use_avx512_bf16(Ops& o);
void use_amx_bf16(Ops& o);
NibbleDots avx512_vnni_nibble_dots();
#endif

namespace {
const Ops* highway_named(const char* name) {
  for (const HighwayTable& t : highway_tables())
    if (std::strcmp(t.ops->name, name) == 0) return t.ops;
  return nullptr;
}

#if defined(ASSOCMEM_HAVE_AVX512)
bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
}
bool cpu_has_vnni() { return cpu_has_avx512() && __builtin_cpu_supports("avx512vnni"); }
bool cpu_has_avx512_bf16() { return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16"); }
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
#endif
}  // namespace

// The tables are composed here, once: Highway's AVX3 table, then the hand-written entries over it.
const Ops* avx512_ops() {
  static const Ops* ops = []() -> const Ops* {
    const Ops* h = highway_named("avx512");
    if (!h) return nullptr;
    static Ops t = *h;
#if defined(ASSOCMEM_HAVE_AVX512)
    if (cpu_has_vnni()) t.nibble_dots = avx512_vnni_nibble_dots();
#endif
    return &t;
  }();
  return ops;
}

const Ops* avx512_bf16_ops() {
#if defined(ASSOCMEM_HAVE_AVX512)
  static const Ops* ops = []() -> const Ops* {
    if (!avx512_ops() || !cpu_has_avx512_bf16()) return nullptr;
    static Ops t = *avx512_ops();
    t.name = "avx512_bf16";
    use_avx512_bf16(t);
    return &t;
  }();
  return ops;
#else
  return nullptr;
#endif
}

const Ops* amx_bf16_ops() {
#if defined(ASSOCMEM_HAVE_AVX512)
  static const Ops* ops = []() -> const Ops* {
    if (!avx512_bf16_ops() || !cpuid_amx_bf16() || !amx_permitted()) return nullptr;
    static Ops t = *avx512_bf16_ops();
    t.name = "amx_bf16";
    use_amx_bf16(t);
    return &t;
  }();
  return ops;
#else
  return nullptr;
#endif
}

NibbleDots avx512_highway_nibble_dots() {
  const Ops* h = highway_named("avx512");
  return h && avx512_ops() && avx512_ops()->nibble_dots != h->nibble_dots ? h->nibble_dots : nullptr;
}

const Ops& generic_ops() {
  static const Ops* ops = highway_tables().back().ops;
  return *ops;
}

// Every table this CPU runs, best first (the AVX-512 ones as composed above).
const std::vector<const Ops*>& tables() {
  static const std::vector<const Ops*> all = [] {
    std::vector<const Ops*> v;
    for (const Ops* t : {amx_bf16_ops(), avx512_bf16_ops()})
      if (t) v.push_back(t);
    for (const HighwayTable& t : highway_tables())
      v.push_back(std::strcmp(t.ops->name, "avx512") == 0 ? avx512_ops() : t.ops);
    return v;
  }();
  return all;
}

const Ops* table_named(const char* name) {
  for (const Ops* t : tables())
    if (std::strcmp(t->name, name) == 0) return t;
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
  for (const Ops* t : tables())
    if (bf16_store || !t->bf16_products) return *t;
  return generic_ops();
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
  for (const kernels::Ops* t : kernels::tables()) names.emplace_back(t->name);
  return names;
}
}  // namespace assocmem
