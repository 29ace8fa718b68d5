// assocmem index: the int8 codes of a store for certified retrieval (assocmem/codes.hpp), written
// beside it as STORE.codes (or --output), or checked against it with --verify.
#include "common.hpp"

#include <chrono>
#include <memory>
#include <string>

#include "assocmem/codes.hpp"
#include "assocmem/store.hpp"

namespace assocmem::cli {
namespace {

struct IndexArgs {
  std::string store, output, codes = "int8";
  bool verify = false;
  int threads = 0;
};

int cmd_index(const IndexArgs& a, bool as_json) {
  if (a.codes != "int8") throw BadInput("--codes: only int8 is implemented, got '" + a.codes + "'");
  const std::string out = a.output.empty() ? CodeIndex::default_path(a.store) : a.output;
  check_distinct({{"store", a.store}}, {{"output", out}});
  const MemoryStore store = MemoryStore::open(a.store);
  if (store.size() == 0) throw BadInput("'" + a.store + "' holds no memories: there is nothing to index");
  if (store.dtype() == DType::Bits)
    throw BadInput("'" + a.store + "' holds bits (+-1 patterns, model A): certified retrieval is for float32 and "
                   "bfloat16 stores (models B and C)");
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_ptr<CodeIndex> codes;
  if (a.verify) {
    codes = std::make_unique<CodeIndex>(CodeIndex::open(out, store));
  } else {
    codes = std::make_unique<CodeIndex>(CodeIndex::build(store, a.threads));
    codes->save(out);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double fraction = double(codes->bytes()) / double(store.size() * (4 * store.dim() + 8));
  json j = {{"store", a.store}, {"codes", out}, {"kind", a.codes}, {"memories", codes->size()},
            {"dim", codes->dim()}, {"bytes", codes->bytes()}, {"fraction_of_float32_store", fraction},
            {"verified", a.verify}, {"seconds", secs}};
  char pct[32];
  std::snprintf(pct, sizeof pct, "%.1f%%", 100.0 * fraction);
  emit(as_json, j,
       std::string(a.verify ? "checked " : "wrote ") + out + ": int8 codes of " + std::to_string(codes->size()) +
           " memories of dimension " + std::to_string(codes->dim()) + " (" + pct + " of a float32 store)" +
           (a.verify ? ", they belong to " + a.store : "") + "\n");
  return 0;
}

}  // namespace

Command add_index(CLI::App& app) {
  auto a = std::make_shared<IndexArgs>();
  auto* ix = app.add_subcommand(
      "index", "Build the int8 codes of a store for certified retrieval (recall --certify EPS), written atomically "
               "beside it as STORE.codes; --verify checks existing codes against the store");
  ix->add_option("store", a->store, "Memory store (.amem, float32 or bfloat16)")->required();
  ix->add_option("--codes", a->codes, "Kind of codes: int8 (d bytes, a scale and an error bound per memory)")
      ->capture_default_str()
      ->check(CLI::IsMember({"int8"}));
  ix->add_option("-o,--output", a->output, "Where to write the codes (default: STORE.codes, where recall looks)");
  ix->add_flag("--verify", a->verify, "Check the codes (checksums, and that they belong to this store) instead");
  ix->add_option("--threads", a->threads, "Worker threads (0 = the CPUs this process may use)")->capture_default_str()->transform(whole<int>(0));
  return {ix, [a](bool as_json) { return cmd_index(*a, as_json); }};
}

}  // namespace assocmem::cli
