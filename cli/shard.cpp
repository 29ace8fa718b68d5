// assocmem shard: split a store (or a .npy file of patterns) into shards with a manifest
// (assocmem/shards.hpp), or check a manifest and its shards.
#include "common.hpp"

#include <cstring>
#include <memory>
#include <string>

#include "assocmem/io.hpp"
#include "assocmem/shards.hpp"
#include "assocmem/store.hpp"

namespace assocmem::cli {
namespace {

struct ShardArgs {
  std::string input, out_dir, verify, dtype = "float32", normalize = "none";
  std::size_t parts = 0;
  bool payloads = false;
};

// A store file starts with the store format's magic; anything else is read as .npy.
bool is_store_file(const std::string& path) {
  const InputFile f(path, "input");
  char magic[8] = {};
  if (f.size() < sizeof magic) return false;
  f.read_at(0, magic, sizeof magic);
  return std::memcmp(magic, "ASMSTORE", sizeof magic) == 0;
}

json describe(const ShardManifest& m) {
  json shards = json::array();
  for (std::size_t i = 0; i < m.shards.size(); ++i)
    shards.push_back({{"file", m.shard_path(i)}, {"count", m.shards[i].count}, {"first_row", m.shards[i].first_row},
                      {"min_id", m.shards[i].min_id}, {"max_id", m.shards[i].max_id}});
  return {{"manifest", m.path}, {"count", m.count}, {"dim", m.dim}, {"dtype", to_string(m.dtype)}, {"shards", shards}};
}

int cmd_shard(const ShardArgs& a, bool dtype_given, bool normalize_given, bool as_json) {
  if (!a.verify.empty()) {
    if (!a.input.empty() || a.parts)
      throw BadInput("--verify takes a manifest alone (no input, output folder or --parts)");
    const ShardManifest m = read_manifest(a.verify, a.payloads ? ShardCheck::Payloads : ShardCheck::Headers);
    emit(as_json, describe(m),
         a.verify + ": " + std::to_string(m.shards.size()) + " shards, " + std::to_string(m.count) + " memories of " +
             "dimension " + std::to_string(m.dim) + " (" + to_string(m.dtype) + "); " +
             (a.payloads ? "every shard's header and payload" : "every shard's header") + " match the manifest\n");
    return 0;
  }
  if (a.input.empty() || a.out_dir.empty()) throw BadInput("shard needs INPUT and OUT_DIR (or --verify MANIFEST)");
  if (a.parts == 0) throw BadInput("--parts must be given and >= 1 (the number of shards)");
  std::unique_ptr<MemoryStore> store;
  if (is_store_file(a.input)) {
    if (dtype_given || normalize_given)
      throw BadInput("--dtype and --normalize apply to .npy input; '" + a.input + "' is a store (its dtype is kept)");
    store = std::make_unique<MemoryStore>(MemoryStore::open(a.input));
  } else {
    store = std::make_unique<MemoryStore>(store_from_npy(a.input, parse_dtype(a.dtype), a.normalize));
  }
  const ShardManifest m = write_shards(*store, a.out_dir, a.parts);
  emit(as_json, describe(m),
       "wrote " + m.path + ": " + std::to_string(m.shards.size()) + " shards of " + std::to_string(m.count) +
           " memories of dimension " + std::to_string(m.dim) + " (" + to_string(m.dtype) + ")\n");
  return 0;
}

}  // namespace

Command add_shard(CLI::App& app) {
  auto a = std::make_shared<ShardArgs>();
  auto* sh = app.add_subcommand(
      "shard",
      "Split a store (.amem) or patterns (.npy) into shards of consecutive memories with a checksummed manifest "
      "(OUT_DIR/manifest.json; each shard an ordinary store), or check a manifest with --verify");
  sh->add_option("input", a->input, "Store (.amem) or patterns (.npy: float32, float64 or int8, C order)");
  sh->add_option("out_dir", a->out_dir, "Folder for the shards and manifest.json (created; must hold no files)");
  sh->add_option("--parts", a->parts, "Number of shards (1 to the number of memories; sizes differ by at most one)")
      ->transform(whole<std::size_t>());
  auto* dtype_opt = sh->add_option("--dtype", a->dtype, "For .npy input: float32, bfloat16 or bits (+-1)")
                        ->capture_default_str()
                        ->check(CLI::IsMember({"float32", "bfloat16", "bits"}));
  auto* norm_opt = sh->add_option("--normalize", a->normalize, "For .npy input: none, l2 (unit rows) or sign (+-1)")
                       ->capture_default_str()
                       ->check(CLI::IsMember({"none", "l2", "sign"}));
  sh->add_option("--verify", a->verify, "Check this manifest and every shard's header against it, then exit");
  sh->add_flag("--payloads", a->payloads, "With --verify: also read every shard's payload against its checksum");
  return {sh, [a, dtype_opt, norm_opt](bool as_json) {
            return cmd_shard(*a, dtype_opt->count() > 0, norm_opt->count() > 0, as_json);
          }};
}

}  // namespace assocmem::cli
