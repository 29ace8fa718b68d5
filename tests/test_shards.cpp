// Sharded stores (shards.hpp): the shards put back together are the store (rows and ids byte for
// byte, every dtype), each shard is an ordinary verifiable store, and a manifest or shard that does
// not match is refused before any work, naming the shard.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "assocmem/shards.hpp"
#include "assocmem/store.hpp"
#include "test_util.hpp"

using namespace assocmem;
using assocmem::testing::randn;
using assocmem::testing::read_all;
using assocmem::testing::TempDir;
using assocmem::testing::write_all;

namespace {

MemoryStore make(DType t, std::size_t K, std::size_t d, std::uint64_t id0 = 1000) {
  std::mt19937_64 rng(5);
  Matrix X = randn(Eigen::Index(K), Eigen::Index(d), rng);
  if (t == DType::Bits) X = X.array().sign().matrix();
  std::vector<std::uint64_t> ids(K);
  for (std::size_t i = 0; i < K; ++i) ids[i] = id0 + 7 * (K - i);  // unique, not in row order
  MemoryStore s(d, t);
  s.append(X, ids);
  return s;
}

TEST(Shards, PutBackTogetherTheyAreTheStore) {
  for (DType t : {DType::Float32, DType::BFloat16, DType::Bits})
    for (std::size_t parts : {1u, 3u, 7u, 10u}) {
      SCOPED_TRACE(to_string(t) + ", " + std::to_string(parts) + " parts");
      TempDir dir;
      const MemoryStore s = make(t, 10, 70);
      const ShardManifest w = write_shards(s, dir.file("shards"), parts);
      const ShardManifest m = read_manifest(dir.file("shards/manifest.json"), ShardCheck::Payloads);
      ASSERT_EQ(m.shards.size(), parts);
      EXPECT_EQ(m.dim, 70u);
      EXPECT_EQ(m.dtype, t);
      EXPECT_EQ(m.count, 10u);
      std::size_t row = 0;
      for (std::size_t i = 0; i < parts; ++i) {
        const MemoryStore sh = open_shard(m, i);
        EXPECT_EQ(m.shards[i].first_row, row);
        EXPECT_LE(sh.size(), 10 / parts + 1);
        EXPECT_GE(sh.size(), 10 / parts);
        // An ordinary store: it opens by itself, checksum verified.
        const MemoryStore alone = MemoryStore::open(m.shard_path(i));
        EXPECT_EQ(alone.size(), sh.size());
        for (std::size_t r = 0; r < sh.size(); ++r, ++row) {
          EXPECT_EQ(std::memcmp(sh.row(r), s.row(row), s.row_bytes()), 0) << "row " << row;
          EXPECT_EQ(sh.ids()[r], s.ids()[row]);
        }
        EXPECT_EQ(m.shards[i].min_id, *std::min_element(sh.ids(), sh.ids() + sh.size()));
        EXPECT_EQ(m.shards[i].max_id, *std::max_element(sh.ids(), sh.ids() + sh.size()));
        EXPECT_EQ(m.shards[i].checksum, w.shards[i].checksum);
      }
      EXPECT_EQ(row, 10u);
    }
}

TEST(Shards, BadArgumentsAreRefusedAndNothingIsOverwritten) {
  TempDir dir;
  const MemoryStore s = make(DType::Float32, 5, 4);
  EXPECT_THROW_MSG(write_shards(s, dir.file("a"), 0), InvalidArgument, "parts must be in [1, 5]");
  EXPECT_THROW_MSG(write_shards(s, dir.file("a"), 6), InvalidArgument, "parts must be in [1, 5]");
  std::filesystem::create_directories(dir.file("full"));
  write_all(dir.file("full/keep.txt"), {'x'});
  EXPECT_THROW_MSG(write_shards(s, dir.file("full"), 2), InvalidArgument, "is not empty");
  EXPECT_EQ(read_all(dir.file("full/keep.txt")).size(), 1u);
  // A store cannot hold an id twice (MemoryStore::append and open refuse it; test_store), so the shards'
  // own check of unique ids is not reachable from here.
  MemoryStore dup(4, DType::Float32);
  EXPECT_THROW_MSG(dup.append(randn(3, 4, *std::make_unique<std::mt19937_64>(1)), {5, 9, 5}), InvalidArgument,
                   "id 5 is given twice");
}

// Rewrites the manifest with `edit` applied and a correct checksum: a valid manifest of wrong content.
void edit_manifest(const std::string& path, const std::function<void(ShardManifest&)>& edit) {
  ShardManifest m = read_manifest(path);
  edit(m);
  write_manifest(m);
}

TEST(Shards, MismatchesAreRefusedNamingTheShard) {
  TempDir dir;
  const MemoryStore s = make(DType::Float32, 12, 6);
  const std::string man = dir.file("s/manifest.json");
  write_shards(s, dir.file("s"), 3);
  const auto original = read_all(man);

  // The manifest edited by hand: its checksum no longer matches.
  auto text = original;
  const std::string needle = "\"count\": 12";
  auto pos = std::search(text.begin(), text.end(), needle.begin(), needle.end());
  ASSERT_NE(pos, text.end());
  *(pos + static_cast<long>(needle.size()) - 1) = '3';
  write_all(man, text);
  EXPECT_THROW_MSG(read_manifest(man), IoError, "checksum mismatch");
  write_all(man, original);

  // A shard file swapped with another: same dtype and dim, other contents.
  const auto s0 = read_all(dir.file("s/shard-00000.amem")), s1 = read_all(dir.file("s/shard-00001.amem"));
  write_all(dir.file("s/shard-00000.amem"), s1);
  EXPECT_THROW_MSG(read_manifest(man), IoError, "shard 0 ('");
  EXPECT_THROW_MSG(read_manifest(man), IoError, "is not the file the manifest was written for");
  write_all(dir.file("s/shard-00000.amem"), s0);

  // A corrupted payload: found by the payload check (and by any open that verifies).
  auto bad = s0;
  bad[4096 + 3] ^= 0x10;
  write_all(dir.file("s/shard-00000.amem"), bad);
  EXPECT_NO_THROW(read_manifest(man, ShardCheck::Headers));
  EXPECT_THROW_MSG(read_manifest(man, ShardCheck::Payloads), IoError, "payload checksum mismatch");
  EXPECT_THROW_MSG(open_shard(read_manifest(man), 0), IoError, "shard 0");
  write_all(dir.file("s/shard-00000.amem"), s0);

  // A missing shard.
  std::filesystem::rename(dir.file("s/shard-00002.amem"), dir.file("s/gone"));
  EXPECT_THROW_MSG(read_manifest(man), IoError, "shard 2");
  std::filesystem::rename(dir.file("s/gone"), dir.file("s/shard-00002.amem"));
  EXPECT_NO_THROW(read_manifest(man, ShardCheck::Payloads));

  // Shards that disagree in dimension or dtype with the manifest (a valid manifest otherwise).
  MemoryStore other(7, DType::Float32);
  other.append(randn(4, 7, *std::make_unique<std::mt19937_64>(2)));
  const std::uint64_t sum = other.save(dir.file("s/other.amem"));
  edit_manifest(man, [&](ShardManifest& m) {
    m.shards[1].file = "other.amem";
    m.shards[1].checksum = sum;
  });
  EXPECT_THROW_MSG(read_manifest(man), IoError, "shard 1 ('");
  EXPECT_THROW_MSG(read_manifest(man), IoError, "memories of dimension 7, the manifest float32 of dimension 6");
  write_all(man, original);

  // Fields that cannot be: rows not consecutive, counts that do not add up, names outside the folder.
  edit_manifest(man, [](ShardManifest& m) { m.shards[2].first_row = 9; });
  EXPECT_THROW_MSG(read_manifest(man), IoError, "first_row 9, but the shards before it end at row 8");
  write_all(man, original);
  edit_manifest(man, [](ShardManifest& m) { m.shards[1].max_id += 1; });  // ids compared with the shard's own
  EXPECT_THROW_MSG(read_manifest(man), IoError, "shard 1 ('shard-00001.amem') holds ids");
  write_all(man, original);
  edit_manifest(man, [](ShardManifest& m) { m.count = 13; });
  EXPECT_THROW_MSG(read_manifest(man), IoError, "the shards hold 12 memories");
  write_all(man, original);
  edit_manifest(man, [](ShardManifest& m) { m.shards[0].file = "../escape.amem"; });
  EXPECT_THROW_MSG(read_manifest(man), IoError, "plain file name");
  write_all(man, original);
  write_all(man, {'{', '}'});
  EXPECT_THROW_MSG(read_manifest(man), IoError, "missing \"format\"");
  write_all(man, {'n', 'o'});
  EXPECT_THROW_MSG(read_manifest(man), IoError, "not valid JSON");
  // Nested 100,000 levels deep (a stack overflow once): refused while parsing. 62 levels are read
  // (and then refused for what they are).
  for (std::size_t levels : {std::size_t{100000}, std::size_t{62}}) {
    const std::string deep = std::string(levels, '[') + "1" + std::string(levels, ']');
    const std::string text = "{\"format\": \"assocmem-shards\", \"dim\": " + deep + "}";
    write_all(man, std::vector<char>(text.begin(), text.end()));
    if (levels > 64) {
      EXPECT_THROW_MSG(read_manifest(man), IoError, "nested more than 64 levels deep");
    } else {
      EXPECT_THROW_MSG(read_manifest(man), IoError, "missing \"version\"");
    }
  }
}

}  // namespace
