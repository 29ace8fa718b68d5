// Sharded stores (shards.hpp): the manifest, its checksum, and the checks made before any work.
#include "assocmem/shards.hpp"

#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "assocmem/io.hpp"
#include "json_reader.hpp"

namespace assocmem {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr const char* kFormat = "assocmem-shards";
constexpr int kVersion = 1;

std::string hex(std::uint64_t x) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(x));
  return buf;
}

std::string folder_of(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

bool plain_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

// The manifest without its checksum, as JSON (keys sorted by nlohmann's std::map objects).
json body(const ShardManifest& m) {
  json shards = json::array();
  for (const ShardInfo& s : m.shards)
    shards.push_back({{"file", s.file}, {"count", s.count}, {"first_row", s.first_row}, {"min_id", s.min_id},
                      {"max_id", s.max_id}, {"checksum", hex(s.checksum)}});
  return {{"format", kFormat}, {"version", kVersion}, {"dim", m.dim}, {"dtype", to_string(m.dtype)},
          {"count", m.count}, {"shards", shards}};
}

std::uint64_t checksum_of(const json& j) {
  const std::string text = j.dump();
  return XXH64(text.data(), text.size(), 0);
}

// Field `key` of object `o` as the JSON type asked for, or IoError naming where.
template <class T>
T field(const json& o, const char* key, const std::string& where) {
  auto it = o.find(key);
  if (it == o.end()) throw IoError(where + ": missing \"" + key + "\"");
  if constexpr (std::is_same_v<T, std::string>) {
    if (!it->is_string()) throw IoError(where + ": \"" + key + "\" must be a string");
  } else {
    if (!it->is_number_unsigned()) throw IoError(where + ": \"" + key + "\" must be a whole number >= 0");
  }
  return it->get<T>();
}

void only_keys(const json& o, std::initializer_list<const char*> keys, const std::string& where) {
  for (auto it = o.begin(); it != o.end(); ++it)
    if (std::none_of(keys.begin(), keys.end(), [&](const char* k) { return it.key() == k; }))
      throw IoError(where + ": unknown key \"" + it.key() + "\"");
}

std::uint64_t parse_hex(const std::string& s, const std::string& where) {
  if (s.size() != 16 || s.find_first_not_of("0123456789abcdef") != std::string::npos)
    throw IoError(where + ": a checksum must be 16 lowercase hex digits, got \"" + s + "\"");
  return std::stoull(s, nullptr, 16);
}

// The shard's header against its manifest entry.
void check_shard(const ShardManifest& m, std::size_t i, const MemoryStore& s) {
  const ShardInfo& e = m.shards[i];
  const std::string where = "manifest '" + m.path + "': shard " + std::to_string(i) + " ('" + m.shard_path(i) + "')";
  if (s.dim() != m.dim || s.dtype() != m.dtype)
    throw IoError(where + " holds " + to_string(s.dtype()) + " memories of dimension " + std::to_string(s.dim()) +
                  ", the manifest " + to_string(m.dtype) + " of dimension " + std::to_string(m.dim));
  if (s.size() != e.count)
    throw IoError(where + " holds " + std::to_string(s.size()) + " memories, the manifest says " +
                  std::to_string(e.count));
  if (s.file_checksum() != e.checksum)
    throw IoError(where + " is not the file the manifest was written for (checksum " + hex(s.file_checksum()) +
                  ", the manifest says " + hex(e.checksum) + ")");
}

}  // namespace

std::string ShardManifest::shard_path(std::size_t i) const {
  ASSOCMEM_CHECK_ARG(i < shards.size(), "shard ", i, " out of range (", shards.size(), " shards)");
  return (fs::path(folder_of(path)) / shards[i].file).string();
}

void write_manifest(const ShardManifest& m) {
  ASSOCMEM_CHECK_ARG(!m.path.empty(), "write_manifest: the manifest's path is empty");
  ASSOCMEM_CHECK_ARG(!m.shards.empty(), "write_manifest: no shards");
  json j = body(m);
  j["checksum"] = hex(checksum_of(j));
  const std::string text = j.dump(2) + "\n";
  write_file_atomically(m.path, {{text.data(), text.size()}});
}

ShardManifest write_shards(const MemoryStore& store, const std::string& out_dir, std::size_t parts) {
  const std::size_t K = store.size();
  ASSOCMEM_CHECK_ARG(parts >= 1 && parts <= K, "parts must be in [1, ", K, "] (one memory per shard at least), got ",
                     parts);
  ASSOCMEM_CHECK_ARG(parts <= 99999, "parts must be at most 99999, got ", parts);
  {  // Ids unique across the whole store: each then names one memory on whichever rank holds it.
    std::vector<std::uint64_t> ids(store.ids(), store.ids() + K);
    std::sort(ids.begin(), ids.end());
    const auto dup = std::adjacent_find(ids.begin(), ids.end());
    ASSOCMEM_CHECK_ARG(dup == ids.end(), "the store's ids must be unique to be sharded; id ", *dup,
                       " appears more than once");
  }
  std::error_code ec;
  if (fs::exists(out_dir, ec)) {
    ASSOCMEM_CHECK_ARG(fs::is_directory(out_dir, ec), "'", out_dir, "' exists and is not a folder");
    ASSOCMEM_CHECK_ARG(fs::directory_iterator(out_dir, ec) == fs::directory_iterator(), "folder '", out_dir,
                       "' is not empty; shards are written into a new or empty folder (nothing is overwritten)");
  } else if (!fs::create_directories(out_dir, ec)) {
    throw IoError("cannot create folder '" + out_dir + "': " + ec.message());
  }
  ShardManifest m;
  m.path = (fs::path(out_dir) / "manifest.json").string();
  m.dim = store.dim();
  m.dtype = store.dtype();
  m.count = K;
  for (std::size_t p = 0; p < parts; ++p) {
    const std::size_t begin = K * p / parts, end = K * (p + 1) / parts;
    ShardInfo e;
    char name[32];
    std::snprintf(name, sizeof name, "shard-%05zu.amem", p);
    e.file = name;
    e.count = end - begin;
    e.first_row = begin;
    const auto [lo, hi] = std::minmax_element(store.ids() + begin, store.ids() + end);
    e.min_id = *lo;
    e.max_id = *hi;
    e.checksum = store.slice(begin, end).save((fs::path(out_dir) / e.file).string());
    m.shards.push_back(e);
  }
  write_manifest(m);  // last: a manifest names only shards that are complete
  return m;
}

ShardManifest read_manifest(const std::string& path, ShardCheck check) {
  const std::string where = "manifest '" + path + "'";
  std::string text;
  {
    const InputFile f(path, "manifest");
    const std::size_t n = f.size();
    if (n > (std::size_t{64} << 20)) throw IoError(where + ": " + std::to_string(n) + " bytes is too large for a manifest");
    text.resize(n);
    f.read_at(0, text.data(), n);
  }
  const json j = detail::parse_json<IoError>(text, where);
  if (!j.is_object()) throw IoError(where + ": not a JSON object");
  only_keys(j, {"format", "version", "dim", "dtype", "count", "shards", "checksum"}, where);
  if (field<std::string>(j, "format", where) != kFormat) throw IoError(where + ": \"format\" is not \"" + kFormat + "\"");
  const auto version = field<std::uint64_t>(j, "version", where);
  if (version != kVersion)
    throw IoError(where + ": version " + std::to_string(version) + " is not supported (this build reads version " +
                  std::to_string(kVersion) + ")");
  const std::uint64_t recorded = parse_hex(field<std::string>(j, "checksum", where), where);
  json unsummed = j;
  unsummed.erase("checksum");
  if (checksum_of(unsummed) != recorded) throw IoError(where + ": checksum mismatch (the manifest was edited or corrupted)");

  ShardManifest m;
  m.path = path;
  m.dim = field<std::uint64_t>(j, "dim", where);
  if (m.dim < 1 || m.dim > kMaxStoreDim) throw IoError(where + ": invalid dim " + std::to_string(m.dim));
  try {
    m.dtype = parse_dtype(field<std::string>(j, "dtype", where));
  } catch (const InvalidArgument& e) {
    throw IoError(where + ": " + e.what());
  }
  m.count = field<std::uint64_t>(j, "count", where);
  const auto it = j.find("shards");
  if (it == j.end() || !it->is_array() || it->empty()) throw IoError(where + ": \"shards\" must be a non-empty array");
  std::uint64_t next_row = 0;
  std::set<std::string> names;
  for (std::size_t i = 0; i < it->size(); ++i) {
    const json& o = (*it)[i];
    const std::string w = where + ": shard " + std::to_string(i);
    if (!o.is_object()) throw IoError(w + " is not an object");
    only_keys(o, {"file", "count", "first_row", "min_id", "max_id", "checksum"}, w);
    ShardInfo e;
    e.file = field<std::string>(o, "file", w);
    if (!plain_name(e.file)) throw IoError(w + ": \"file\" must be a plain file name in the manifest's folder, got \"" + e.file + "\"");
    if (!names.insert(e.file).second) throw IoError(w + ": file \"" + e.file + "\" is named twice");
    e.count = field<std::uint64_t>(o, "count", w);
    e.first_row = field<std::uint64_t>(o, "first_row", w);
    e.min_id = field<std::uint64_t>(o, "min_id", w);
    e.max_id = field<std::uint64_t>(o, "max_id", w);
    e.checksum = parse_hex(field<std::string>(o, "checksum", w), w);
    if (e.count == 0) throw IoError(w + ": no memories");
    if (e.first_row != next_row)
      throw IoError(w + ": first_row " + std::to_string(e.first_row) + ", but the shards before it end at row " +
                    std::to_string(next_row));
    if (e.min_id > e.max_id) throw IoError(w + ": min_id > max_id");
    next_row += e.count;
    m.shards.push_back(e);
  }
  if (next_row != m.count)
    throw IoError(where + ": the shards hold " + std::to_string(next_row) + " memories, \"count\" says " +
                  std::to_string(m.count));
  for (std::size_t i = 0; i < m.shards.size(); ++i) {
    // Headers: mapped, not read; payloads: hashed once (every shard is an ordinary verified store).
    const MemoryStore s = open_shard(m, i, {check == ShardCheck::Payloads, Access::Map});
    (void)s;
  }
  return m;
}

MemoryStore open_shard(const ShardManifest& m, std::size_t i, const OpenOptions& options) {
  const std::string file = m.shard_path(i);
  MemoryStore s = [&] {
    try {
      return MemoryStore::open(file, options);
    } catch (const IoError& e) {
      throw IoError("manifest '" + m.path + "': shard " + std::to_string(i) + ": " + e.what());
    }
  }();
  check_shard(m, i, s);
  // The ids the manifest records for the shard (issue 23: never compared): its smallest and largest.
  if (s.size() > 0) {
    const auto [lo, hi] = std::minmax_element(s.ids(), s.ids() + s.size());
    if (*lo != m.shards[i].min_id || *hi != m.shards[i].max_id)
      throw IoError(detail::concat("manifest '", m.path, "': shard ", i, " ('", m.shards[i].file, "') holds ids ", *lo,
                                   "..", *hi, ", the manifest says ", m.shards[i].min_id, "..", m.shards[i].max_id));
    s.check_intact();
  }
  return s;
}

MemoryStore open_shards(const ShardManifest& m, const std::vector<std::size_t>& which, const OpenOptions& options) {
  ASSOCMEM_CHECK_ARG(!which.empty(), "open_shards: no shard asked for");
  if (which.size() == 1) return open_shard(m, which[0], options);
  MemoryStore all(m.dim, m.dtype);
  std::vector<float> rows;
  for (std::size_t i : which) {
    const MemoryStore s = open_shard(m, i, {options.verify_checksum, Access::Map});
    rows.resize(s.size() * s.dim());
    for (std::size_t r = 0; r < s.size(); ++r) s.decode_row(r, &rows[r * s.dim()]);  // exact for every dtype
    all.append(rows.data(), s.size(), s.ids());
    s.check_intact();
  }
  return all;
}

}  // namespace assocmem
