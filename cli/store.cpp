// assocmem store: build a memory store from a .npy file of patterns.
#include "common.hpp"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "assocmem/io.hpp"
#include "assocmem/npy.hpp"
#include "assocmem/store.hpp"

namespace assocmem::cli {
namespace {

// Every value finite (a NaN would pass silently through sign or l2 normalisation).
void check_finite_rows(const std::vector<float>& rows, std::size_t cols, const std::string& file) {
  for (std::size_t k = 0; k < rows.size(); ++k)
    if (!std::isfinite(rows[k]))
      throw BadInput("'" + file + "': pattern " + std::to_string(k / cols) + " element " + std::to_string(k % cols) +
                     " is NaN or Inf");
}

struct StoreArgs {
  std::string input, output, dtype = "float32", normalize = "none";
  bool append = false;
};

int cmd_store(const StoreArgs& a, bool dtype_given, bool as_json) {
  check_distinct({{"input", a.input}}, {{"store", a.output}});
  const NpyArray arr = read_npy(a.input);
  std::vector<float> rows = arr.to_float32();
  check_finite_rows(rows, arr.cols, a.input);
  if (a.normalize == "l2") {
    for (std::size_t i = 0; i < arr.rows; ++i) {
      double s = 0;
      for (std::size_t j = 0; j < arr.cols; ++j) s += double(rows[i * arr.cols + j]) * rows[i * arr.cols + j];
      if (s == 0) throw BadInput("--normalize l2: pattern " + std::to_string(i) + " of '" + a.input + "' is zero");
      const float inv = static_cast<float>(1.0 / std::sqrt(s));
      for (std::size_t j = 0; j < arr.cols; ++j) rows[i * arr.cols + j] *= inv;
    }
  } else if (a.normalize == "sign") {
    for (auto& x : rows) x = x > 0 ? 1.0f : -1.0f;
  }
  const DType dtype = parse_dtype(a.dtype);
  std::size_t count = 0;
  DType written = dtype;
  try {
    if (a.append) {
      // Under the folder lock from the read to the rename: concurrent appends are all kept.
      count = MemoryStore::append_to_file(a.output, rows.data(), arr.rows, arr.cols, dtype, dtype_given);
      written = MemoryStore::open(a.output, {false, Access::Map}).dtype();
    } else {
      MemoryStore s(arr.cols, dtype);
      s.append(rows.data(), arr.rows);
      s.save(a.output);
      count = s.size();
    }
  } catch (const InvalidArgument& e) {
    throw BadInput("'" + a.input + "': " + e.what() + (dtype == DType::Bits ? " (use --normalize sign)" : ""));
  }
  emit(as_json, {{"store", a.output}, {"count", count}, {"dim", arr.cols}, {"dtype", to_string(written)}},
       "wrote " + a.output + ": " + std::to_string(count) + " memories of dimension " + std::to_string(arr.cols) + " (" +
           to_string(written) + ")\n");
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
  st->add_flag("--append", a->append, "Append to the store when it exists (concurrent appends are serialised by a lock)");

  return {st, [a, dtype_opt](bool as_json) { return cmd_store(*a, dtype_opt->count() > 0, as_json); }};
}

}  // namespace assocmem::cli
