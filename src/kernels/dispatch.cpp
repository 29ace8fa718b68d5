// Runtime choice of the kernel table: checked once, here, in code compiled for any x86-64.
#include "kernels.hpp"

namespace assocmem::kernels {

#if defined(ASSOCMEM_HAVE_AVX512)
const Ops* avx512_table();
const Ops* avx512_bf16_table();

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
}  // namespace

const Ops* avx512_ops() { return cpu_has_avx512() ? avx512_table() : nullptr; }
const Ops* avx512_bf16_ops() { return cpu_has_avx512_bf16() ? avx512_bf16_table() : nullptr; }
#else
const Ops* avx512_ops() { return nullptr; }
const Ops* avx512_bf16_ops() { return nullptr; }
#endif

}  // namespace assocmem::kernels
