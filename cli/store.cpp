// assocmem store: build a memory store from a .npy file of patterns.
#include "common.hpp"
#include "ranks.hpp"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "assocmem/codes.hpp"
#include "assocmem/io.hpp"
#include "assocmem/npy.hpp"
#include "assocmem/store.hpp"

namespace assocmem::cli {
namespace {

struct StoreArgs {
  std::string input, output, dtype = "float32", normalize = "none";
  bool append = false, codes = false;
};

int cmd_store(const StoreArgs& a, bool dtype_given, bool as_json) {
  if (under_mpirun())
    throw BadInput("store: started by mpirun, every rank would write the store (--append would append once per "
                   "rank); run it as one process");
  check_distinct({{"input", a.input}}, {{"store", a.output}});
  const DType dtype = parse_dtype(a.dtype);
  check_distinct({{"input", a.input}}, {{"codes", a.codes ? CodeIndex::default_path(a.output) : std::string()}});
  // The store as written (its file, and with --codes the codes beside it, are committed together when
  // the command ends: cli.cpp's OutputBatch).
  MemoryStore s(1, dtype);
  if (a.append) {
    ProgressBar bar("reading");
    const Patterns p = read_patterns(a.input, a.normalize, &bar);
    try {
      // Under the folder lock from the read to the rename: concurrent appends are all kept.
      MemoryStore::append_to_file(a.output, p.rows.data(), p.count, p.cols, dtype, dtype_given, &s);
    } catch (const InvalidArgument& e) {
      throw BadInput("'" + a.input + "': " + e.what() + (dtype == DType::Bits ? " (use --normalize sign)" : ""));
    }
  } else {
    s = store_from_npy(a.input, dtype, a.normalize);
    s.save(a.output);
  }
  const std::size_t count = s.size(), dim = s.dim();
  const DType written = s.dtype();
  json out = {{"store", a.output}, {"count", count}, {"dim", dim}, {"dtype", to_string(written)}};
  std::string codes_note;
  if (a.codes) {  // the codes of certified retrieval at store time (as `assocmem index` writes them)
    if (s.dtype() == DType::Bits)
      throw BadInput("--codes: a store of bits (+-1 patterns, model A) has no codes; certified retrieval is for "
                     "models B and C over float32 or bfloat16");
    const std::string path = CodeIndex::default_path(a.output);
    CodeIndex::build(s).save(path);
    out["codes"] = path;
    codes_note = " and its codes " + path;
  }
  emit(as_json, out,
       "wrote " + a.output + ": " + std::to_string(count) + " memories of dimension " + std::to_string(dim) + " (" +
           to_string(written) + ")" + codes_note + "\n");
  return 0;
}

}  // namespace

Command add_store(CLI::App& app) {
  auto a = std::make_shared<StoreArgs>();
  auto* st = app.add_subcommand("store", "Build a memory store from a .npy file of patterns (K x d)");
  st->add_option("input", a->input, "Patterns (.npy: float32, float64 or int8, C order)")->required();
  st->add_option("output", a->output, "Store file to write (atomically)")->required();
  auto* dtype_opt = st->add_option("--dtype", a->dtype, "Element type: float32, bfloat16 or bits (+-1); with --append, "
                                   "must match the existing store's")->capture_default_str()
      ->check(CLI::IsMember({"float32", "bfloat16", "bits"}));
  st->add_option("--normalize", a->normalize, "none, l2 (unit rows) or sign (+-1)")->capture_default_str()
      ->check(CLI::IsMember({"none", "l2", "sign"}));
  st->add_flag("--codes", a->codes, "Also write the codes of certified retrieval beside the store (STORE.codes, as "
                                    "assocmem index does)");
  st->add_flag("--append", a->append, "Append to the store when it exists (concurrent appends are serialised by a lock)");

  return {st, [a, dtype_opt](bool as_json) { return cmd_store(*a, dtype_opt->count() > 0, as_json); }};
}

}  // namespace assocmem::cli
