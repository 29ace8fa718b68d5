// assocmem/shards.hpp - a store split into shards: P ordinary store files (store.hpp) of consecutive
// memories and a manifest naming them, so that each shard can live on its own machine (issue 13).
//
// The manifest (JSON, written last and atomically beside the shards):
//   {"format": "assocmem-shards", "version": 1, "dim": d, "dtype": "float32" | "bfloat16" | "bits",
//    "count": K, "shards": [{"file": "shard-00000.amem", "count": k_0, "first_row": 0,
//                            "min_id": ..., "max_id": ..., "checksum": "<16 hex digits>"}, ...],
//    "checksum": "<16 hex digits>"}
// Shard i holds the global rows [first_row, first_row + count) with their ids (unique across the whole
// store); its "checksum" is the XXH64 of its payload recorded in its own header, so a shard file that
// was replaced, swapped or edited is refused; the manifest's "checksum" is the XXH64 of the manifest
// without that key (its keys sorted, no spaces: nlohmann::json::dump()). File names are plain names in
// the manifest's folder, which can therefore be moved as a whole. Every shard is an ordinary,
// independently verifiable .amem file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "assocmem/store.hpp"

namespace assocmem {

struct ShardInfo {
  std::string file;                      ///< plain file name in the manifest's folder
  std::uint64_t count = 0;               ///< memories in the shard (>= 1)
  std::uint64_t first_row = 0;           ///< global index of its first memory
  std::uint64_t min_id = 0, max_id = 0;  ///< its smallest and largest id
  std::uint64_t checksum = 0;            ///< XXH64 of its payload, as in its header
};

struct ShardManifest {
  std::string path;  ///< the manifest file
  std::size_t dim = 0;
  DType dtype = DType::Float32;
  std::uint64_t count = 0;  ///< memories in all shards
  std::vector<ShardInfo> shards;
  /// The file of shard i (beside the manifest).
  std::string shard_path(std::size_t i) const;
};

/// How much of the shards read_manifest checks.
enum class ShardCheck {
  Headers,  ///< each shard's header (dim, dtype, count, payload checksum) against the manifest
  Payloads  ///< also every shard's payload against its checksum (reads every byte)
};

/// Splits `store` into `parts` shards of consecutive memories (sizes differ by at most one), written
/// into the folder out_dir (created if missing; it must hold no files), then out_dir/manifest.json;
/// each file atomically, the manifest last. parts in [1, store.size()]; ids must be unique
/// (InvalidArgument names a repeated id). Returns the manifest.
ShardManifest write_shards(const MemoryStore& store, const std::string& out_dir, std::size_t parts);

/// Writes a manifest (atomically) for shards already in its folder: m.path names the file; fields as
/// read_manifest checks them. For shards built some other way than write_shards (one per .npy file).
void write_manifest(const ShardManifest& m);

/// Reads and validates a manifest before any work: its checksum, format, version, fields (unknown
/// keys are errors), shard names, consecutive rows summing to count, and every shard file against it
/// (headers, or also payloads). Throws IoError naming the manifest and the shard and the problem.
ShardManifest read_manifest(const std::string& path, ShardCheck check = ShardCheck::Headers);

/// Opens shard i and checks it against the manifest (dim, dtype, count, checksum); IoError naming the
/// shard otherwise.
MemoryStore open_shard(const ShardManifest& m, std::size_t i, const OpenOptions& options = {});

/// Shards `which` (indices into m.shards, in that order) as one store: one shard is opened as it is
/// (OpenOptions decide copy or map), several are read and concatenated (rows and ids exact, held in
/// memory). Each is checked against the manifest as open_shard does.
MemoryStore open_shards(const ShardManifest& m, const std::vector<std::size_t>& which, const OpenOptions& options = {});

}  // namespace assocmem
