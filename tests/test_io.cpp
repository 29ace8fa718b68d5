// Reliability: the rules of assocmem/io.hpp (outputs, locks, temporaries, modes, inputs), the store's
// limits and guards, thread failures, overflowing numbers. docs/reliability.md points here.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <thread>

#include <xxhash.h>

#include "assocmem/capacity.hpp"
#include "assocmem/dynamics.hpp"
#include "assocmem/engine.hpp"
#include "assocmem/io.hpp"
#include "assocmem/lagrangian.hpp"
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

std::string text_of(const std::string& p) {
  const auto v = read_all(p);
  return {v.begin(), v.end()};
}
void write_text(const std::string& p, const std::string& t) { write_file_atomically(p, {{t.data(), t.size()}}); }
mode_t mode_of(const std::string& p) {
  struct stat sb {};
  EXPECT_EQ(::stat(p.c_str(), &sb), 0) << p;
  return sb.st_mode & 07777;
}
int temporaries_in(const std::string& dir) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir)) n += e.path().filename().string().rfind(".assocmem-tmp.", 0) == 0;
  return n;
}

// ---- sizes ---------------------------------------------------------------------------------------
TEST(Sizes, CheckedProductsRefuseOverflow) {
  EXPECT_EQ(checked_mul(1u << 20, 1u << 20, "x"), std::size_t{1} << 40);
  EXPECT_THROW_MSG(checked_mul(std::size_t{1} << 62, 4, "K x N"), InvalidArgument, "K x N");
  EXPECT_THROW_MSG(checked_add(std::numeric_limits<std::size_t>::max(), 1, "count"), InvalidArgument, "count");
  EXPECT_THROW_MSG(check_fits_in_memory(std::size_t{1} << 60, "the data"), InvalidArgument, "more than this machine");
}

TEST(Sizes, CapacityRefusesImpossibleSizes) {
  CapacitySpec s;
  s.N = 4;
  s.K = std::size_t{1} << 62;  // K x N wraps to 0 in 64 bits
  EXPECT_THROW_MSG(measure_capacity(s), InvalidArgument, "K x N");
  s.K = std::size_t{1} << 40;  // fits in 64 bits, not in memory
  EXPECT_THROW_MSG(measure_capacity(s), InvalidArgument, "memory");
}

TEST(Sizes, StoreShapeLimitsHoldForWritingAndReading) {
  EXPECT_THROW_MSG(MemoryStore(std::size_t{1} << 62, DType::Float32), InvalidArgument, "dim");
  EXPECT_THROW_MSG(MemoryStore(1000000000000000ull, DType::Float32), InvalidArgument, "dim");  // (0, 10^15)
  // The largest dimension that can be made can also be saved and read back (empty store).
  TempDir dir;
  MemoryStore big(kMaxStoreDim, DType::Bits);
  big.save(dir.file("big.amem"));
  EXPECT_EQ(MemoryStore::open(dir.file("big.amem")).dim(), kMaxStoreDim);
}

// ---- inputs --------------------------------------------------------------------------------------
TEST(Inputs, FifosDirectoriesAndMissingFilesAreRefusedWithoutBlocking) {
  TempDir dir;
  const std::string fifo = dir.file("pipe");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW_MSG(MemoryStore::open(fifo), IoError, "FIFO");
  EXPECT_THROW_MSG(read_npy(fifo), IoError, "FIFO");
  EXPECT_THROW_MSG(InputFile(fifo, "config"), IoError, "config");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
  EXPECT_THROW_MSG(read_npy(dir.file(".")), IoError, "directory");
  EXPECT_THROW_MSG(read_npy(dir.file("missing.npy")), IoError, "missing.npy");
}

TEST(Inputs, NpyHeaderParserIsStrict) {
  TempDir dir;
  auto npy = [&](const std::string& dict, std::size_t data_bytes) {
    std::string h = dict;
    while ((10 + h.size() + 1) % 64) h.push_back(' ');
    h.push_back('\n');
    std::string f = "\x93NUMPY";
    f.push_back('\x01');
    f.push_back('\x00');
    f.push_back(static_cast<char>(h.size() & 0xFF));
    f.push_back(static_cast<char>(h.size() >> 8));
    f += h + std::string(data_bytes, '\0');
    write_all(dir.file("h.npy"), std::vector<char>(f.begin(), f.end()));
    return dir.file("h.npy");
  };
  EXPECT_EQ(read_npy(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (10, 8), }", 320)).rows, 10u);
  EXPECT_EQ(read_npy(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", 20)).cols, 5u);
  EXPECT_THROW_MSG(read_npy(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1 0, 8), }", 320)), IoError,
                   "shape");
  EXPECT_THROW_MSG(read_npy(npy("{'descr': '<f4', 'fortran_order': Falsey, 'shape': (10, 8), }", 320)), IoError,
                   "fortran_order");
  EXPECT_THROW_MSG(read_npy(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (5), }", 20)), IoError, "shape");
  EXPECT_THROW_MSG(read_npy(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), 'x': 1}", 16)), IoError,
                   "unknown key");
  EXPECT_THROW_MSG(read_npy(npy("{'descr': '<f4', 'shape': (2, 2), }", 16)), IoError, "fortran_order");
  EXPECT_THROW_MSG(read_npy(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), } x", 16)), IoError,
                   "after the dict");
  // A shape far larger than memory (a sparse file would hold it) is refused before allocating.
  EXPECT_THROW_MSG(read_npy(npy("{'descr': '<f8', 'fortran_order': False, 'shape': (100000000000, 8), }", 0)),
                   IoError, "truncated");
}

TEST(Inputs, SparseNpyLargerThanMemoryIsRefused) {
  // The header claims 10^10 x 8 float64 (640 GB) and the file really is that long, but sparse: the
  // reader must refuse before allocating, not die in std::bad_alloc or the OOM killer.
  TempDir dir;
  const double one = 1.0;
  write_npy(dir.file("s.npy"), &one, 1, 1);
  std::vector<char> f = read_all(dir.file("s.npy"));
  std::string text(f.begin(), f.end());
  const std::string from = "'shape': (1, 1)", to = "'shape': (10000000000, 8)";
  const std::size_t at = text.find(from);
  ASSERT_NE(at, std::string::npos);
  std::string header = text.substr(10, text.size() - 10 - 8);
  header.replace(header.find(from), from.size(), to);
  header = header.substr(0, header.find('}') + 1);
  while ((10 + header.size() + 1) % 64) header.push_back(' ');
  header.push_back('\n');
  std::string out = text.substr(0, 8);
  out.push_back(static_cast<char>(header.size() & 0xFF));
  out.push_back(static_cast<char>(header.size() >> 8));
  out += header;
  write_all(dir.file("big.npy"), std::vector<char>(out.begin(), out.end()));
  if (::truncate(dir.file("big.npy").c_str(), static_cast<off_t>(out.size() + 80000000000ull * 8)) != 0)
    GTEST_SKIP() << "this file system cannot hold a sparse 640 GB file";
  EXPECT_THROW_MSG(read_npy(dir.file("big.npy")), IoError, "more than this machine's memory");
}

TEST(Inputs, Float64ThatOverflowsFloat32IsNamed) {
  TempDir dir;
  const double g[3] = {0.5, 1e300, -1.0};
  write_npy(dir.file("g.npy"), g, 1, 3);
  const NpyArray a = read_npy(dir.file("g.npy"));
  EXPECT_EQ(a.to_matrix()(0, 1), 1e300);  // float64 readers keep it
  EXPECT_THROW_MSG(a.to_float32(), InvalidArgument, "does not fit in float32");
}

// ---- outputs -------------------------------------------------------------------------------------
TEST(Outputs, SpecialFilesAreRefusedAndLeftAlone) {
  TempDir dir;
  const std::string fifo = dir.file("pipe");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_THROW_MSG(write_text(fifo, "x"), IoError, "FIFO");
  EXPECT_THROW_MSG(write_text(dir.file("."), "x"), IoError, "directory");
  struct stat sb {};
  ASSERT_EQ(::lstat(fifo.c_str(), &sb), 0);
  EXPECT_TRUE(S_ISFIFO(sb.st_mode));
  EXPECT_THROW_MSG(write_text("", "x"), IoError, "empty");
}

TEST(Outputs, SymlinksAreWrittenThrough) {
  TempDir dir;
  fs::create_directory(dir.file("real"));
  write_text(dir.file("real/target.txt"), "old");
  fs::create_symlink("real/target.txt", dir.file("link1"));  // relative to the link's folder
  fs::create_symlink(dir.file("link1"), dir.file("link2"));  // a chain
  write_text(dir.file("link2"), "new");
  EXPECT_TRUE(fs::is_symlink(dir.file("link1")));
  EXPECT_TRUE(fs::is_symlink(dir.file("link2")));
  EXPECT_EQ(text_of(dir.file("real/target.txt")), "new");
  fs::create_symlink(dir.file("loopA"), dir.file("loopB"));
  fs::create_symlink(dir.file("loopB"), dir.file("loopA"));
  EXPECT_THROW_MSG(write_text(dir.file("loopA"), "x"), IoError, "symbolic links");
  // A dangling link creates its target.
  fs::create_symlink(dir.file("real/fresh.txt"), dir.file("dangling"));
  write_text(dir.file("dangling"), "fresh");
  EXPECT_EQ(text_of(dir.file("real/fresh.txt")), "fresh");
}

TEST(Outputs, NewFilesFollowTheUmaskAndReplacedFilesKeepTheirMode) {
  TempDir dir;
  const mode_t old = ::umask(077);
  write_text(dir.file("private.txt"), "a");
  ::umask(022);
  write_text(dir.file("public.txt"), "a");
  ::umask(old);
  EXPECT_EQ(mode_of(dir.file("private.txt")), 0600u);
  EXPECT_EQ(mode_of(dir.file("public.txt")), 0644u);
  ASSERT_EQ(::chmod(dir.file("public.txt").c_str(), 0640), 0);
  write_text(dir.file("public.txt"), "b");
  EXPECT_EQ(mode_of(dir.file("public.txt")), 0640u);
  // A store appended to keeps its mode too.
  MemoryStore s(4, DType::Float32);
  const float row[4] = {1, 2, 3, 4};
  s.append(row, 1);
  s.save(dir.file("s.amem"));
  ASSERT_EQ(::chmod(dir.file("s.amem").c_str(), 0600), 0);
  MemoryStore::append_to_file(dir.file("s.amem"), row, 1, 4, DType::Float32);
  EXPECT_EQ(mode_of(dir.file("s.amem")), 0600u);
}

TEST(Outputs, AWriteErrorKeepsTheOldFile) {
  // A file-size limit makes write() fail with EFBIG, as a full disk fails with ENOSPC: the save
  // throws IoError naming the path, the old store is intact and no temporary is left.
  TempDir dir;
  const std::string path = dir.file("s.amem");
  MemoryStore small(16, DType::Float32);
  std::vector<float> rows(16 * 100000, 0.5f);
  small.append(rows.data(), 10);
  small.save(path);
  const std::vector<char> before = read_all(path);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::signal(SIGXFSZ, SIG_IGN);
    const rlimit lim{1 << 20, 1 << 20};
    if (::setrlimit(RLIMIT_FSIZE, &lim) != 0) _exit(3);
    MemoryStore big(16, DType::Float32);
    big.append(rows.data(), 100000);  // 6.4 MB
    try {
      big.save(path);
      _exit(1);
    } catch (const IoError& e) {
      _exit(std::strstr(e.what(), "s.amem") ? 0 : 2);
    }
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(read_all(path), before);
  EXPECT_EQ(temporaries_in(dir.file(".")), 0);
}

TEST(Outputs, LongFileNamesWork) {
  TempDir dir;
  const std::string name(253, 'n');  // a legal name; the temporary's name does not grow with it
  write_text(dir.file(name), "x");
  EXPECT_EQ(text_of(dir.file(name)), "x");
}

TEST(Outputs, TemporariesOfKilledWritersAreRemovedByTheNextWriter) {
  TempDir dir;
  write_all(dir.file(".assocmem-tmp.0123456789abcdef"), std::vector<char>(1000, 'x'));  // as kill -9 leaves it
  write_all(dir.file("unrelated.tmp"), std::vector<char>(10, 'x'));
  EXPECT_EQ(temporaries_in(dir.file(".")), 1);
  write_text(dir.file("out.txt"), "x");
  EXPECT_EQ(temporaries_in(dir.file(".")), 0);
  EXPECT_TRUE(fs::exists(dir.file("unrelated.tmp")));
}

TEST(Outputs, SignalsRemoveTemporariesInFlight) {
  // A child registers a temporary (as write_file_atomically does), then gets SIGTERM: the cleanup
  // handler removes it and the child still dies of SIGTERM.
  TempDir dir;
  const std::string tmp = dir.file("in-flight.csv");
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    install_signal_cleanup();
    write_all(tmp, std::vector<char>(10, 'x'));
    TempPath guard(tmp);
    for (;;) ::pause();
  }
  for (int i = 0; i < 500 && !fs::exists(tmp); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ASSERT_TRUE(fs::exists(tmp));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
  EXPECT_FALSE(fs::exists(tmp));
}

TEST(Outputs, AnOutputThatIsAnInputIsRefused) {
  TempDir dir;
  write_text(dir.file("mem.amem"), "x");
  fs::create_hard_link(dir.file("mem.amem"), dir.file("hard.amem"));
  fs::create_symlink(dir.file("mem.amem"), dir.file("soft.amem"));
  EXPECT_THROW_MSG(check_distinct({{"store", dir.file("mem.amem")}}, {{"output", dir.file("hard.amem")}}),
                   InvalidArgument, "same file as the store");
  EXPECT_THROW_MSG(check_distinct({{"store", dir.file("mem.amem")}}, {{"output", dir.file("soft.amem")}}),
                   InvalidArgument, "same file");
  EXPECT_THROW_MSG(check_distinct({{"store", dir.file("mem.amem")}}, {{"output", dir.file("./mem.amem")}}),
                   InvalidArgument, "same file");
  // Two outputs that are one new file.
  EXPECT_THROW_MSG(check_distinct({}, {{"output", dir.file("o.npy")}, {"details", dir.file("./o.npy")}}),
                   InvalidArgument, "same file as the output");
  EXPECT_NO_THROW(check_distinct({{"store", dir.file("mem.amem")}}, {{"output", dir.file("o.npy")}, {"details", ""}}));
}

// Outputs staged in an OutputBatch appear together at commit() and not at all when the batch is
// dropped (an exception between two writes): the old files stay, no temporaries remain; write_file_now
// is not staged (a child process reads such files); batches nest.
// A batch's progress callback follows each file it writes: after every 64 MiB and at the end, bytes
// written rising to the file's size (the command-line tool draws its "writing" bar from it; issue 23).
TEST(Outputs, ABatchReportsTheBytesItWrites) {
  TempDir dir;
  const std::vector<char> big((std::size_t{150} << 20) + 5, 'x'), small(10, 'y');
  std::vector<std::pair<std::size_t, std::size_t>> calls;
  OutputBatch batch;
  batch.on_progress([&](std::size_t done, std::size_t total) { calls.emplace_back(done, total); });
  write_file_atomically(dir.file("big"), {{big.data(), 100u << 20}, {big.data() + (100u << 20), big.size() - (100u << 20)}});
  ASSERT_GE(calls.size(), 3u);  // 150 MiB in chunks of at most 64 MiB
  for (std::size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(calls[i].second, big.size());
    if (i) {
      EXPECT_GT(calls[i].first, calls[i - 1].first);
    }
    EXPECT_LE(calls[i].first - (i ? calls[i - 1].first : 0), std::size_t{64} << 20);
  }
  EXPECT_EQ(calls.back().first, big.size());
  calls.clear();
  write_file_atomically(dir.file("small"), {{small.data(), small.size()}});
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0], std::make_pair(small.size(), small.size()));
  batch.commit();
  EXPECT_EQ(fs::file_size(dir.file("big")), big.size());
}

TEST(Outputs, ABatchCommitsAllOrNothing) {
  TempDir dir;
  auto temporaries = [&] {
    std::size_t n = 0;
    for (const auto& e : fs::directory_iterator(dir.file(".")))
      n += e.path().filename().string().rfind(".assocmem-tmp.", 0) == 0;
    return n;
  };
  auto put = [](const std::string& path, const std::string& text) {
    write_file_atomically(path, {{text.data(), text.size()}});
  };
  auto text = [](const std::string& path) {
    const auto b = read_all(path);
    return std::string(b.begin(), b.end());
  };
  put(dir.file("a"), "old a");
  try {
    OutputBatch batch;
    put(dir.file("a"), "new a");
    put(dir.file("b"), "new b");
    EXPECT_EQ(batch.staged(), 2u);
    EXPECT_EQ(text(dir.file("a")), "old a");  // nothing visible before commit
    EXPECT_FALSE(fs::exists(dir.file("b")));
    EXPECT_EQ(temporaries(), 2u);
    put(dir.file("missing/c"), "c");  // the third output fails: IoError
    batch.commit();
    FAIL() << "the third output should have failed";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("missing/c"), std::string::npos) << e.what();
  }
  EXPECT_EQ(text(dir.file("a")), "old a");
  EXPECT_FALSE(fs::exists(dir.file("b")));
  EXPECT_EQ(temporaries(), 0u);
  {
    OutputBatch batch;
    put(dir.file("a"), "new a");
    detail::write_file_now(dir.file("now"), {{"x", 1}});
    EXPECT_TRUE(fs::exists(dir.file("now")));
    {
      OutputBatch inner;
      put(dir.file("b"), "inner b");
      inner.commit();
    }
    EXPECT_EQ(text(dir.file("b")), "inner b");
    put(dir.file("c"), "c");
    batch.commit();
  }
  EXPECT_EQ(text(dir.file("a")), "new a");
  EXPECT_EQ(text(dir.file("c")), "c");
  EXPECT_EQ(temporaries(), 0u);
  put(dir.file("d"), "after");  // no batch active any more: written at once
  EXPECT_EQ(text(dir.file("d")), "after");
}

// ---- locks ---------------------------------------------------------------------------------------
TEST(Locks, FolderLockIsReentrantAndSerialisesThreads) {
  TempDir dir;
  std::atomic<int> inside{0}, overlap{0};
  {
    const FolderLock outer(dir.file("a"));
    const FolderLock inner(dir.file("b"));  // same folder, same thread: no deadlock
    write_text(dir.file("c"), "x");         // and writers under it work
  }
  auto worker = [&] {
    for (int i = 0; i < 20; ++i) {
      const FolderLock lock(dir.file("x"));
      if (inside.fetch_add(1) != 0) overlap.fetch_add(1);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      inside.fetch_sub(1);
    }
  };
  std::thread t1(worker), t2(worker);
  t1.join();
  t2.join();
  EXPECT_EQ(overlap.load(), 0);
}

// 4 processes x 20 appends to one store: every append that returned is in the file.
TEST(Locks, ConcurrentAppendsAreAllKept) {
  TempDir dir;
  const std::string path = dir.file("s.amem");
  constexpr int kWriters = 4, kAppends = 20;
  std::vector<pid_t> pids;
  for (int w = 0; w < kWriters; ++w) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      int code = 0;
      for (int i = 0; i < kAppends; ++i) {
        const float row[3] = {static_cast<float>(w), static_cast<float>(i), 1.0f};
        try {
          MemoryStore::append_to_file(path, row, 1, 3, DType::Float32);
        } catch (...) {
          code = 1;
        }
      }
      _exit(code);
    }
    pids.push_back(pid);
  }
  for (pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  const MemoryStore s = MemoryStore::open(path);
  ASSERT_EQ(s.size(), static_cast<std::size_t>(kWriters * kAppends));
  std::vector<int> seen(kWriters * kAppends, 0);
  std::vector<float> row(3);
  for (std::size_t i = 0; i < s.size(); ++i) {
    s.decode_row(i, row.data());
    seen[static_cast<std::size_t>(row[0]) * kAppends + static_cast<std::size_t>(row[1])]++;
  }
  for (int c : seen) EXPECT_EQ(c, 1);
  EXPECT_EQ(temporaries_in(dir.file(".")), 0);
}

// ---- stores that change under a reader ------------------------------------------------------------
TEST(Store, ACopiedStoreIgnoresChangesToItsFile) {
  TempDir dir;
  std::mt19937_64 rng(1);
  MemoryStore s(16, DType::Float32);
  s.append(randn(1000, 16, rng));
  s.save(dir.file("s.amem"));
  const MemoryStore o = MemoryStore::open(dir.file("s.amem"));  // Auto: copied
  ASSERT_FALSE(o.mapped());
  ASSERT_EQ(::truncate(dir.file("s.amem").c_str(), 100), 0);
  EXPECT_TRUE(o.to_matrix() == s.to_matrix());
}

TEST(Store, AMappedStoreThatShrinksGivesAnErrorNotSigbus) {
  TempDir dir;
  std::mt19937_64 rng(1);
  MemoryStore s(64, DType::Float32);
  s.append(randn(20000, 64, rng));  // 5 MB: many pages past the truncation point
  s.save(dir.file("s.amem"));
  const MemoryStore o = MemoryStore::open(dir.file("s.amem"), {true, Access::Map});
  ASSERT_TRUE(o.mapped());
  const ModelBEngine eng(o, 1.0);
  std::vector<float> q(64, 0.1f);
  EXPECT_NO_THROW(eng.retrieve(q.data(), 1));
  ASSERT_EQ(::truncate(dir.file("s.amem").c_str(), 8192), 0);
  EXPECT_THROW_MSG(o.to_matrix(), IoError, "shrank while it was mapped");
  EXPECT_THROW_MSG(eng.retrieve(q.data(), 1), IoError, "shrank");
  EXPECT_THROW_MSG(o.save(dir.file("copy.amem")), IoError, "shrank");
}

TEST(Store, NonzeroPaddingBitsAreRefused) {
  TempDir dir;
  std::mt19937_64 rng(3);
  MemoryStore s(77, DType::Bits);
  s.append(rand_pm1(5, 77, rng));
  s.save(dir.file("b.amem"));
  std::vector<char> f = read_all(dir.file("b.amem"));
  // Set bit 77 (padding) of memory 2's last word, then make both checksums valid again.
  const std::size_t row_bytes = 16, off = 4096 + 2 * row_bytes + 8;
  std::uint64_t word;
  std::memcpy(&word, &f[off], 8);
  word |= std::uint64_t{1} << (77 % 64);
  std::memcpy(&f[off], &word, 8);
  const std::uint64_t payload = XXH64(&f[4096], f.size() - 4096, 0);
  std::memcpy(&f[56], &payload, 8);
  const std::uint64_t header = XXH64(f.data(), 64, 0);
  std::memcpy(&f[64], &header, 8);
  write_all(dir.file("bad.amem"), f);
  EXPECT_THROW_MSG(MemoryStore::open(dir.file("bad.amem")), IoError, "padding bits");
  EXPECT_THROW_MSG(MemoryStore::open(dir.file("bad.amem"), {true, Access::Map}), IoError, "padding bits");
}

TEST(Store, ValuesThatOverflowBfloat16AreRefused) {
  MemoryStore s(3, DType::BFloat16);
  const float ok[3] = {3.38e38f, -1.0f, 0.0f}, bad[3] = {1.0f, 3.4e38f, 0.0f};
  EXPECT_NO_THROW(s.append(ok, 1));
  EXPECT_THROW_MSG(s.append(bad, 1), InvalidArgument, "element 1");
  EXPECT_EQ(s.size(), 1u);
}

// ---- threads -------------------------------------------------------------------------------------
TEST(Threads, AbsurdCountsAreRefused) {
  MemoryStore s(4, DType::Float32);
  const float row[4] = {1, 0, 0, 0};
  s.append(row, 1);
  EngineOptions o;
  o.threads = 10000;
  EXPECT_THROW_MSG(ModelBEngine(s, 1.0, o), InvalidArgument, "threads");
  CapacitySpec c;
  c.threads = -1;
  EXPECT_THROW_MSG(measure_capacity(c), InvalidArgument, "threads");
}

TEST(Threads, AThreadThatCannotStartIsAnErrorNotTerminate) {
  // In a child that may start only a few threads (few processes allowed, or a small address space),
  // most of 200 worker threads cannot start: the call must throw assocmem::Error (exit 0 here), not
  // std::terminate (SIGABRT).
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::mt19937_64 rng(1);
    MemoryStore s(32, DType::Float32);
    s.append(randn(200 * 256, 32, rng));  // 200 tiles: one per thread
    EngineOptions o;
    o.threads = 200;
    const ModelBEngine eng(s, 1.0, o);
    std::vector<float> q(32, 0.1f);
    if (::geteuid() == 0) {
      // The case: an unprivileged user allowed few processes (threads count as processes;
      // 1 = no thread can start, deterministically, whatever the timing of the workers).
      const rlimit lim{1, 1};
      if (::setrlimit(RLIMIT_NPROC, &lim) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) _exit(3);
    } else {
#if defined(__SANITIZE_ADDRESS__)
      _exit(3);  // ASan's shadow memory needs more address space than the limit below leaves
#else
      rlimit lim{};
      getrlimit(RLIMIT_AS, &lim);
      lim.rlim_cur = 400ull << 20;  // 400 MB: room for a few 8 MB stacks only
      if (setrlimit(RLIMIT_AS, &lim) != 0) _exit(3);
#endif
    }
    try {
      eng.retrieve(q.data(), 1);
      _exit(2);  // every thread started: the limit did not bite
    } catch (const Error& e) {
      _exit(std::strstr(e.what(), "worker thread") ? 0 : 4);
    } catch (...) {
      _exit(5);
    }
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status);
  const int code = WEXITSTATUS(status);
  if (code == 2 || code == 3) GTEST_SKIP() << "could not provoke a thread start failure here (code " << code << ")";
  EXPECT_EQ(code, 0);
}

// ---- numbers that overflow -----------------------------------------------------------------------
constexpr KernelChoice kAllKernels[] = {KernelChoice::Generic, KernelChoice::Avx512, KernelChoice::Avx512Bf16,
                                        KernelChoice::AmxBf16};

// The engine over `s` with kernel k, or null when this CPU or store has no such kernel.
std::unique_ptr<ModelBEngine> engine_or_null(const MemoryStore& s, double beta, KernelChoice k) {
  EngineOptions o;
  o.kernel = k;
  try {
    return std::make_unique<ModelBEngine>(s, beta, o);
  } catch (const InvalidArgument& e) {
    if (std::string(e.what()).find("not available") == std::string::npos) throw;
    return nullptr;
  }
}

TEST(Numbers, OverflowingScoresAreRefusedOnEveryKernel) {
  std::mt19937_64 rng(4);
  Matrix X = randn(300, 32, rng);
  X.rowwise().normalize();
  for (DType t : {DType::Float32, DType::BFloat16}) {
    MemoryStore s(32, t);
    s.append(X);
    for (KernelChoice k : kAllKernels) {
      const auto eng = engine_or_null(s, 1.0, k);
      if (!eng) continue;
      for (std::size_t batch : {1u, 4u, 8u}) {
        std::vector<float> q(batch * 32, 0.01f);
        q[(batch - 1) * 32 + 3] = 3e38f;
        EXPECT_THROW_MSG(eng->retrieve(q.data(), batch), InvalidArgument, "row " + std::to_string(batch - 1));
      }
    }
  }
}

TEST(Numbers, HugeBetaRetrievesTheBestMemoryOnEveryKernel) {
  // beta in (1e30, 3.4e38): the softmax is one-hot on the best memory. The shift of the maximum
  // must be exactly 0 (an FMA residual of beta*s made the sum 0 or Inf here before).
  std::mt19937_64 rng(5);
  Matrix X = randn(300, 32, rng);
  X.rowwise().normalize();
  std::vector<float> q(4 * 32);
  for (int b = 0; b < 4; ++b)
    for (int j = 0; j < 32; ++j) q[b * 32 + j] = static_cast<float>(X(10 * b, j) + 0.01 * (j % 3));
  int engines = 0;
  for (DType t : {DType::Float32, DType::BFloat16}) {
    MemoryStore s(32, t);
    s.append(X);
    std::vector<float> row(32);
    for (KernelChoice k : kAllKernels)
      for (double beta : {1e4, 1e31, 1e36}) {
        const auto eng = engine_or_null(s, beta, k);
        if (!eng) continue;
        ++engines;
        for (std::size_t batch : {1u, 4u}) {
          const Retrieval r = eng->retrieve(q.data(), batch);
          for (std::size_t b = 0; b < batch; ++b) {
            s.decode_row(10 * b, row.data());  // the stored (possibly bfloat16) memory
            for (int j = 0; j < 32; ++j)
              ASSERT_NEAR(r.states[b * 32 + j], row[j], t == DType::Float32 ? 1e-6 : 1e-2)
                  << "kernel " << eng->kernel() << " beta " << beta << " batch " << batch;
          }
        }
      }
  }
  EXPECT_GE(engines, 3);  // at least the generic kernel for both dtypes at each beta
}

TEST(Numbers, LogSumExpAtHugeBetaIsFinite) {
  const LagrangianPtr L = lagrangians::log_sum_exp(1e308);
  Vector x(3), g;
  x << 1.0, 2.0, -3.0;
  L->gradient(x, g);
  EXPECT_TRUE(g.allFinite());
  EXPECT_DOUBLE_EQ(g[1], 1.0);
  EXPECT_NEAR(L->value(x), 2.0, 1e-12);
  const LagrangianPtr M = lagrangians::log_sum_exp(1.0);
  x << 1e308, -1e308, 0.0;
  M->gradient(x, g);
  EXPECT_TRUE(g.allFinite());
  EXPECT_DOUBLE_EQ(g[0], 1.0);
}

TEST(Numbers, DivergingIntegrationsStopWithSolverError) {
  std::mt19937_64 rng(6);
  const Matrix xi = randn(5, 4, rng);
  const Network net(xi, lagrangians::identity(), lagrangians::log_sum_exp(1.0));
  SimulateOptions o;
  o.method = Method::Euler;
  o.dt = 10.0;
  o.t_end = 1000.0;
  const Vector v0 = randn(4, rng);
  EXPECT_THROW_MSG(simulate(net, v0, Vector(), o), SolverError, "energy");
  o.dt = 0.05;  // a stable step runs to the end
  o.t_end = 5.0;
  EXPECT_NO_THROW(simulate(net, v0, Vector(), o));
}

}  // namespace
