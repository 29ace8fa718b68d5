// The memory store (round trips for every dtype, memory-mapped open, atomic save that survives a
// kill, clear errors for every kind of broken file) and .npy input/output.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include <xxhash.h>

#include "assocmem/binary.hpp"
#include "assocmem/engine.hpp"
#include "assocmem/npy.hpp"
#include "assocmem/store.hpp"
#include "test_util.hpp"

using namespace assocmem;
using assocmem::testing::rand_pm1;
using assocmem::testing::randn;
using assocmem::testing::read_all;
using assocmem::testing::TempDir;
using assocmem::testing::write_all;
namespace fs = std::filesystem;

namespace {

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(bf16_to_float(0x3F80), 1.0f);
  // 1 + 2^-8 is exactly halfway between 1 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(float_to_bf16(1.0f + 1.0f / 256), 0x3F80);
  EXPECT_EQ(float_to_bf16(1.0f + 3.0f / 256), 0x3F82);  // halfway, rounds up to even
  EXPECT_EQ(float_to_bf16(-2.5f), 0xC020);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
  EXPECT_TRUE(std::isinf(bf16_to_float(float_to_bf16(INFINITY))));
  std::mt19937_64 rng(1);
  for (int i = 0; i < 1000; ++i) {
    const float x = static_cast<float>(randn(1, rng)[0]);
    EXPECT_LE(std::fabs(bf16_to_float(float_to_bf16(x)) - x), std::fabs(x) / 256.0f);
  }
}

TEST(Store, RoundTripEveryDtype) {
  TempDir dir;
  std::mt19937_64 rng(2);
  for (DType t : {DType::Float32, DType::BFloat16, DType::Bits}) {
    const std::size_t d = 77;  // not a multiple of 64 or 32
    const Matrix X = t == DType::Bits ? rand_pm1(50, d, rng) : randn(50, d, rng);
    MemoryStore s(d, t);
    std::vector<std::uint64_t> ids(30);
    for (std::size_t i = 0; i < 30; ++i) ids[i] = 1000 + 7 * i;
    s.append(Matrix(X.topRows(30)), ids);
    s.append(Matrix(X.bottomRows(20)));  // default ids continue after the largest (1000 + 7 * 29)
    ASSERT_EQ(s.size(), 50u);
    EXPECT_EQ(s.ids()[30], 1204u);
    const std::string path = dir.file("s_" + to_string(t) + ".amem");
    s.save(path);
    const MemoryStore o = MemoryStore::open(path, {true, Access::Map});
    EXPECT_TRUE(o.mapped());
    EXPECT_FALSE(MemoryStore::open(path).mapped());  // a small store is read into memory (Access::Auto)
    EXPECT_TRUE(MemoryStore::open(path).to_matrix() == o.to_matrix());
    EXPECT_EQ(o.size(), 50u);
    EXPECT_EQ(o.dim(), d);
    EXPECT_EQ(o.dtype(), t);
    EXPECT_EQ(o.ids()[3], 1021u);
    EXPECT_EQ(o.ids()[49], 1223u);
    EXPECT_EQ(o.next_id(), 1224u);
    const Matrix back = o.to_matrix();
    for (Eigen::Index i = 0; i < X.rows(); ++i)
      for (Eigen::Index j = 0; j < X.cols(); ++j) {
        const double expect = t == DType::BFloat16 ? bf16_to_float(float_to_bf16(static_cast<float>(X(i, j))))
                                                   : static_cast<float>(X(i, j));
        ASSERT_EQ(back(i, j), expect) << to_string(t) << " " << i << "," << j;
      }
    EXPECT_TRUE(back == s.to_matrix());
  }
}

TEST(Store, AppendToAnOpenedStoreAndSaveOverIt) {
  TempDir dir;
  std::mt19937_64 rng(3);
  MemoryStore s(8, DType::Float32);
  s.append(randn(5, 8, rng));
  const std::string path = dir.file("a.amem");
  s.save(path);
  MemoryStore o = MemoryStore::open(path, {true, Access::Map});
  const Matrix extra = randn(3, 8, rng);
  o.append(extra);  // copies the mapping into memory first
  EXPECT_FALSE(o.mapped());
  o.save(path);     // replaces the file it was opened from
  const MemoryStore again = MemoryStore::open(path);
  EXPECT_EQ(again.size(), 8u);
  EXPECT_NEAR((again.to_matrix().bottomRows(3) - extra).norm(), 0.0, 1e-6);
  EXPECT_EQ(again.ids()[7], 7u);
  // No temporary files are left behind.
  int files = 0;
  for (const auto& e : fs::directory_iterator(fs::path(path).parent_path())) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
}

// Ids stay unique (issue 23): default ids continue after the largest (they used to continue from
// size(), which collided with given ids); given ids that repeat, or are in the store, are refused and
// leave the store as it was; a file with a repeated id or a NaN, checksums recomputed, is refused on open.
TEST(Store, IdsStayUniqueAndValuesAreCheckedOnOpen) {
  TempDir dir;
  std::mt19937_64 rng(9);
  MemoryStore s(4, DType::Float32);
  s.append(randn(2, 4, rng), {5, 6});
  s.append(randn(10, 4, rng));
  std::vector<std::uint64_t> ids(s.ids(), s.ids() + s.size());
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(std::adjacent_find(ids.begin(), ids.end()), ids.end());
  EXPECT_EQ(s.ids()[2], 7u);
  EXPECT_EQ(s.next_id(), 17u);
  EXPECT_THROW_MSG(s.append(randn(1, 4, rng), {9}), InvalidArgument, "id 9 is already in the store");
  EXPECT_THROW_MSG(s.append(randn(2, 4, rng), {40, 40}), InvalidArgument, "id 40 is given twice");
  EXPECT_EQ(s.size(), 12u);
  s.append(randn(1, 4, rng), {100});
  EXPECT_EQ(s.next_id(), 101u);

  const std::string path = dir.file("s.amem");
  s.save(path);
  const std::vector<char> good = read_all(path);
  const std::size_t payload = 4096, rows = 13 * 16;
  auto reseal = [&](std::vector<char> f) {
    const std::uint64_t ph = XXH64(&f[payload], f.size() - payload, 0);
    std::memcpy(&f[56], &ph, 8);
    const std::uint64_t hh = XXH64(f.data(), 64, 0);
    std::memcpy(&f[64], &hh, 8);
    write_all(path, f);
  };
  auto twice = good;
  std::memcpy(&twice[payload + rows + 8 * 3], &twice[payload + rows + 8 * 1], 8);  // memory 3 gets memory 1's id
  reseal(twice);
  for (Access a : {Access::Copy, Access::Map})
    EXPECT_THROW_MSG(MemoryStore::open(path, {false, a}), IoError, "id 6 belongs to memories 1 and 3");
  auto nan = good;
  const float x = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(&nan[payload + 16 * 2 + 4], &x, 4);  // memory 2, element 1
  reseal(nan);
  EXPECT_THROW_MSG(MemoryStore::open(path), IoError, "memory 2 (id 7) element 1 is NaN or Inf");
  // Opened without the payload pass, the engines find it when they are made.
  const MemoryStore unverified = MemoryStore::open(path, {false, Access::Map});
  EXPECT_THROW_MSG(ModelBEngine(unverified, 1.0), InvalidArgument, "memory 2 (id 7) has a NaN or Inf element");
  EXPECT_THROW_MSG(ModelCEngine(unverified, {Interaction::Power, 3, 1}, 1.0), InvalidArgument, "memory 2 (id 7)");
}

// A store in use by an engine cannot change under it (issue 23: appending to a store a model was using
// crashed the interpreter): append is refused while any engine over it exists, and allowed again after.
TEST(Store, AStoreInUseCannotChange) {
  std::mt19937_64 rng(10);
  MemoryStore keys(4, DType::Float32), values(3, DType::Float32);
  keys.append(randn(20, 4, rng));
  values.append(randn(20, 3, rng));
  {
    const ModelBEngine b(keys, values, 2.0);
    EXPECT_EQ(keys.users(), 1u);
    EXPECT_EQ(values.users(), 1u);
    EXPECT_THROW_MSG(keys.append(randn(1, 4, rng)), InvalidArgument, "the store is in use by 1 engine or model");
    EXPECT_THROW_MSG(values.append(randn(1, 3, rng)), InvalidArgument, "in use");
    {
      ModelCEngine c(keys, {Interaction::Power, 3, 1}, 1.0);
      ModelCEngine moved = std::move(c);
      EXPECT_EQ(keys.users(), 2u);
      EXPECT_THROW_MSG(keys.append(randn(1, 4, rng)), InvalidArgument, "in use by 2 engines or models");
    }
    EXPECT_EQ(keys.size(), 20u);
  }
  EXPECT_EQ(keys.users(), 0u);
  keys.append(randn(1, 4, rng));
  values.append(randn(1, 3, rng));
  MemoryStore bits(64, DType::Bits);
  bits.append(rand_pm1(5, 64, rng));
  {
    const ModelAEngine a(bits, {Interaction::Power, 3, 1});
    EXPECT_THROW_MSG(bits.append(rand_pm1(1, 64, rng)), InvalidArgument, "in use");
  }
  bits.append(rand_pm1(1, 64, rng));
  EXPECT_EQ(bits.size(), 6u);
}

TEST(Store, EmptyStoreRoundTrips) {
  TempDir dir;
  MemoryStore s(4, DType::BFloat16);
  s.save(dir.file("e.amem"));
  const MemoryStore o = MemoryStore::open(dir.file("e.amem"));
  EXPECT_EQ(o.size(), 0u);
  EXPECT_EQ(o.dim(), 4u);
}

TEST(Store, BadInputIsRejected) {
  MemoryStore s(3, DType::Bits);
  const float half[3] = {1.0f, 0.5f, -1.0f};
  EXPECT_THROW_MSG(s.append(half, 1), InvalidArgument, "only +1 and -1");
  MemoryStore f(3, DType::Float32);
  const float nan[3] = {1.0f, std::nanf(""), 0.0f};
  EXPECT_THROW_MSG(f.append(nan, 1), InvalidArgument, "NaN or Inf");
  EXPECT_EQ(f.size(), 0u);  // nothing was appended
  EXPECT_THROW_MSG(f.append(Matrix::Ones(2, 4)), InvalidArgument, "dim 3");
  EXPECT_THROW_MSG(MemoryStore(0, DType::Float32), InvalidArgument, "dim");
  EXPECT_THROW_MSG(parse_dtype("int4"), InvalidArgument, "dtype");
  EXPECT_THROW_MSG(f.save("/nonexistent-dir/x.amem"), IoError, "/nonexistent-dir/x.amem");
}

TEST(Store, BrokenFilesGiveClearErrors) {
  TempDir dir;
  std::mt19937_64 rng(4);
  MemoryStore s(16, DType::Float32);
  s.append(randn(40, 16, rng));
  const std::string good = dir.file("good.amem");
  s.save(good);
  const std::vector<char> bytes = read_all(good);
  const std::string bad = dir.file("bad.amem");

  EXPECT_THROW_MSG(MemoryStore::open(dir.file("missing.amem")), IoError, "missing.amem");

  write_all(bad, {});
  EXPECT_THROW_MSG(MemoryStore::open(bad), IoError, "truncated");
  for (std::size_t cut : {std::size_t{30}, std::size_t{100}, std::size_t{4096}, bytes.size() - 1}) {
    write_all(bad, std::vector<char>(bytes.begin(), bytes.begin() + static_cast<long>(cut)));
    EXPECT_THROW_MSG(MemoryStore::open(bad), IoError, "bad.amem");
  }
  auto patched = bytes;
  patched[0] = 'X';
  write_all(bad, patched);
  EXPECT_THROW_MSG(MemoryStore::open(bad), IoError, "magic");

  patched = bytes;
  patched[8] = 2;  // a future version (header checksum is checked after the version)
  write_all(bad, patched);
  EXPECT_THROW_MSG(MemoryStore::open(bad), IoError, "version 2");

  patched = bytes;
  patched[20] ^= 1;  // count
  write_all(bad, patched);
  EXPECT_THROW_MSG(MemoryStore::open(bad), IoError, "header checksum");

  patched = bytes;
  patched[4096 + 123] ^= 0x10;  // one bit of the payload
  write_all(bad, patched);
  EXPECT_THROW_MSG(MemoryStore::open(bad), IoError, "payload checksum");
  OpenOptions fast;
  fast.verify_checksum = false;
  EXPECT_NO_THROW(MemoryStore::open(bad, fast));

  patched = bytes;
  patched.push_back(0);
  write_all(bad, patched);
  EXPECT_THROW_MSG(MemoryStore::open(bad), IoError, "trailing bytes");

  EXPECT_THROW_MSG(MemoryStore::open(dir.file("")), IoError, "not a regular file");
}

// kill -9 at 20 random moments of large saves: the file is always the old store or a complete new
// one, never a torn one, and the next writer removes the temporaries the killed ones left. The random
// moment counts from the child's first save (it says so through a pipe once its 64 MiB store is built):
// on a slow or loaded CPU (under qemu-x86_64 with a Zen 1's CPUID) building it took longer than the
// longest wait, so every kill landed before any save and the test saw no temporary.
TEST(Store, KillNineLoopLeavesOldOrNewAndNoTemporaries) {
  TempDir dir;
  std::mt19937_64 rng(5);
  const std::string path = dir.file("kill.amem");
  MemoryStore small(64, DType::Float32);
  small.append(randn(10, 64, rng));
  small.save(path);
  const std::vector<char> before = read_all(path);
  int saw_temporary = 0;
  for (int attempt = 0; attempt < 20; ++attempt) {
    int ready[2];
    ASSERT_EQ(pipe(ready), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(ready[0]);
      MemoryStore big(1024, DType::Float32);
      std::vector<float> rows(1024 * 1024, 0.25f);                  // 4 MiB a call
      for (int i = 0; i < 16; ++i) big.append(rows.data(), 1024);  // 64 MiB
      const char go = 1;
      if (write(ready[1], &go, 1) != 1) _exit(3);
      for (;;) big.save(path);  // until killed
    }
    close(ready[1]);
    char go = 0;
    const ssize_t got = read(ready[0], &go, 1);  // 0: the child ended before its first save
    close(ready[0]);
    ASSERT_EQ(got, 1) << "the child ended before saving";
    std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(20, 400)(rng)));
    std::error_code ec;  // files come and go while the child works: never throw here
    for (const auto& e : fs::directory_iterator(dir.file("."), ec))
      saw_temporary += e.path().filename().string().rfind(".assocmem-tmp.", 0) == 0;
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    const MemoryStore after = MemoryStore::open(path);  // verifies both checksums
    if (after.dim() == 64) EXPECT_EQ(read_all(path), before);
    else EXPECT_EQ(after.size(), 16u * 1024u);
  }
  EXPECT_GT(saw_temporary, 0);  // the kills did land during writes
  small.save(dir.file("other.amem"));  // the next writer in the folder
  int temporaries = 0;
  for (const auto& e : fs::directory_iterator(dir.file(".")))
    temporaries += e.path().filename().string().rfind(".assocmem-tmp.", 0) == 0;
  EXPECT_EQ(temporaries, 0);
}

TEST(Npy, RoundTripAndTypes) {
  TempDir dir;
  const float f[6] = {1, 2, 3, 4, 5, 6.5f};
  write_npy(dir.file("f.npy"), f, 2, 3);
  NpyArray a = read_npy(dir.file("f.npy"));
  EXPECT_EQ(a.type, NpyType::Float32);
  EXPECT_EQ(a.rows, 2u);
  EXPECT_EQ(a.cols, 3u);
  EXPECT_EQ(a.to_float32()[5], 6.5f);
  const double g[3] = {0.5, -1.25, 1e300};
  write_npy(dir.file("g.npy"), g, 1, 3, /*as_1d=*/true);
  a = read_npy(dir.file("g.npy"));
  EXPECT_TRUE(a.was_1d);
  EXPECT_EQ(a.to_matrix()(0, 2), 1e300);
  const std::int8_t c[4] = {-1, 1, 1, -1};
  write_npy(dir.file("c.npy"), c, 2, 2);
  a = read_npy(dir.file("c.npy"));
  EXPECT_EQ(a.type, NpyType::Int8);
  EXPECT_EQ(a.to_float32()[0], -1.0f);
  // The header is padded to a multiple of 64 bytes, as numpy writes it.
  EXPECT_EQ((read_all(dir.file("c.npy")).size() - 4) % 64, 0u);
}

TEST(Store, NpyImportAndExport) {
  TempDir dir;
  const double g[6] = {1, -1, 1, -1, -1, 1};
  write_npy(dir.file("p.npy"), g, 2, 3);
  for (DType t : {DType::Float32, DType::BFloat16, DType::Bits}) {
    MemoryStore s(3, t);
    s.append_npy(dir.file("p.npy"));
    EXPECT_EQ(s.size(), 2u);
    s.export_npy(dir.file("out.npy"));
    const NpyArray a = read_npy(dir.file("out.npy"));
    EXPECT_EQ(a.type, t == DType::Bits ? NpyType::Int8 : NpyType::Float32);
    EXPECT_EQ(a.to_matrix(), Eigen::Map<const Matrix>(g, 2, 3));
  }
  MemoryStore wrong(4, DType::Float32);
  EXPECT_THROW_MSG(wrong.append_npy(dir.file("p.npy")), InvalidArgument, "dimension 3");
  const double h[2] = {0.5, std::nan("")};
  write_npy(dir.file("nan.npy"), h, 1, 2);
  MemoryStore s2(2, DType::Float32);
  EXPECT_THROW_MSG(s2.append_npy(dir.file("nan.npy")), InvalidArgument, "nan.npy");
  EXPECT_THROW_MSG(s2.append_npy(dir.file("missing.npy")), IoError, "missing.npy");
}

TEST(Npy, BadFilesGiveClearErrors) {
  TempDir dir;
  EXPECT_THROW_MSG(read_npy(dir.file("none.npy")), IoError, "none.npy");
  write_all(dir.file("x.npy"), {'h', 'e', 'l', 'l', 'o', '!', '!', '!', '!', '!'});
  EXPECT_THROW_MSG(read_npy(dir.file("x.npy")), IoError, "not a .npy");
  auto header = [](const std::string& dict) {
    std::string h = "\x93NUMPY\x01";
    h.push_back('\0');
    h.push_back(static_cast<char>(dict.size()));
    h.push_back('\0');
    h += dict;
    return std::vector<char>(h.begin(), h.end());
  };
  write_all(dir.file("c8.npy"), header("{'descr': '<c8', 'fortran_order': False, 'shape': (2, 2), }"));
  EXPECT_THROW_MSG(read_npy(dir.file("c8.npy")), IoError, "unsupported dtype '<c8'");
  write_all(dir.file("u.npy"), header("{'descr': '<U3', 'fortran_order': False, 'shape': (2, 2), }"));
  EXPECT_THROW_MSG(read_npy(dir.file("u.npy")), IoError, "unsupported dtype '<U3'");
  write_all(dir.file("fo.npy"), header("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }"));
  EXPECT_THROW_MSG(read_npy(dir.file("fo.npy")), IoError, "Fortran");
  write_all(dir.file("3d.npy"), header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 2), }"));
  EXPECT_THROW_MSG(read_npy(dir.file("3d.npy")), IoError, "3 dimensions");
  auto t = header("{'descr': '<f8', 'fortran_order': False, 'shape': (4, 4), }");
  t.resize(t.size() + 20);
  write_all(dir.file("tr.npy"), t);
  EXPECT_THROW_MSG(read_npy(dir.file("tr.npy")), IoError, "truncated data");
}

}  // namespace

// float16 and the integer types are converted (issue 23: they were refused): each value exactly, the
// 64-bit integers to the nearest double (then float32).
TEST(Npy, EveryRealTypeIsConverted) {
  TempDir dir;
  auto file = [&](const std::string& descr, const std::vector<std::uint8_t>& data, std::size_t n) {
    const std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + std::to_string(n) + ",), }";
    std::string h = "\x93NUMPY\x01";
    h.push_back('\0');
    h.push_back(static_cast<char>(dict.size()));
    h.push_back('\0');
    h += dict;
    std::vector<char> bytes(h.begin(), h.end());
    bytes.insert(bytes.end(), data.begin(), data.end());
    write_all(dir.file("t.npy"), bytes);
    return read_npy(dir.file("t.npy"));
  };
  auto le = [](auto... v) {
    std::vector<std::uint8_t> out;
    ([&](auto x) {
      std::uint8_t b[sizeof x];
      std::memcpy(b, &x, sizeof x);
      out.insert(out.end(), b, b + sizeof x);
    }(v), ...);
    return out;
  };
  const std::vector<float> half = file("<f2", le(std::uint16_t{0x3C00}, std::uint16_t{0xC100}, std::uint16_t{0x7BFF},
                                                 std::uint16_t{0x0001}), 4).to_float32();
  EXPECT_EQ(half, (std::vector<float>{1.0f, -2.5f, 65504.0f, std::ldexp(1.0f, -24)}));
  EXPECT_EQ(file("<i2", le(std::int16_t{-3}, std::int16_t{300}), 2).to_float32(), (std::vector<float>{-3, 300}));
  EXPECT_EQ(file("<i4", le(std::int32_t{-70000}, std::int32_t{5}), 2).to_float32(), (std::vector<float>{-70000, 5}));
  EXPECT_EQ(file("<i8", le(std::int64_t{-(std::int64_t{1} << 40)}, std::int64_t{7}), 2).to_float32(),
            (std::vector<float>{-std::ldexp(1.0f, 40), 7}));
  EXPECT_EQ(file("<u2", le(std::uint16_t{65535}), 1).to_float32(), (std::vector<float>{65535}));
  EXPECT_EQ(file("<u4", le(std::uint32_t{4000000000u}), 1).to_float32(), (std::vector<float>{4e9f}));
  EXPECT_EQ(file("<u8", le(std::uint64_t{1} << 60), 1).to_float32(), (std::vector<float>{std::ldexp(1.0f, 60)}));
  const Matrix m = file("<f2", le(std::uint16_t{0x3555}), 1).to_matrix();  // 0.333251953125 exactly
  EXPECT_EQ(m(0, 0), 0.333251953125);
}
