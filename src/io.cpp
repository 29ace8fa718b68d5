// Reading and writing user files safely: see include/assocmem/io.hpp for the rules.
#include "assocmem/io.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <thread>

namespace assocmem {

namespace {

std::string errno_text(int e) { return std::strerror(e); }

std::string dirname_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string basename_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

const char* file_type(mode_t m) {
  if (S_ISREG(m)) return "regular file";
  if (S_ISDIR(m)) return "directory";
  if (S_ISFIFO(m)) return "FIFO (named pipe)";
  if (S_ISSOCK(m)) return "socket";
  if (S_ISCHR(m)) return "character device";
  if (S_ISBLK(m)) return "block device";
  return "special file";
}

constexpr const char kTmpPrefix[] = ".assocmem-tmp.";

std::uint64_t next_random() {
  static std::atomic<std::uint64_t> counter{0};
  std::uint64_t z = static_cast<std::uint64_t>(::getpid()) << 32 ^
                    static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
                    (counter.fetch_add(1) * 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;  // splitmix64 finaliser
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// ---- signal cleanup registry: fixed slots readable from a signal handler -----------------------
struct CleanupSlot {
  std::atomic<int> state{0};  // 0 free, 1 being filled, 2 armed
  bool folder = false;
  char path[PATH_MAX];
};
CleanupSlot g_cleanup[64];

int register_cleanup(const std::string& path, bool folder) {
  if (path.size() + 1 > PATH_MAX) return -1;
  for (int i = 0; i < 64; ++i) {
    int expected = 0;
    if (g_cleanup[i].state.compare_exchange_strong(expected, 1)) {
      g_cleanup[i].folder = folder;
      std::memcpy(g_cleanup[i].path, path.c_str(), path.size() + 1);
      g_cleanup[i].state.store(2);
      return i;
    }
  }
  return -1;  // full: no signal cleanup for this one (the next writer still removes it)
}

void unregister_cleanup(int slot) {
  if (slot >= 0) g_cleanup[slot].state.store(0);
}

std::atomic<pid_t> g_child{0};

void cleanup_now() {  // async-signal-safe: kill, waitpid, unlink and rmdir only
  // A helper process (the plotter) first, so that it cannot write into what is being removed.
  const pid_t child = g_child.exchange(0);
  if (child > 0) {
    ::kill(child, SIGKILL);
    while (::waitpid(child, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  for (auto& s : g_cleanup)
    if (s.state.load() == 2 && !s.folder) ::unlink(s.path);
  for (auto& s : g_cleanup)
    if (s.state.load() == 2 && s.folder) ::rmdir(s.path);
}

struct sigaction g_old_actions[3];
constexpr int kCleanupSignals[3] = {SIGINT, SIGTERM, SIGHUP};

extern "C" void on_cleanup_signal(int sig) {
  cleanup_now();
  for (int i = 0; i < 3; ++i)
    if (kCleanupSignals[i] == sig) ::sigaction(sig, &g_old_actions[i], nullptr);
  ::raise(sig);
}

// ---- the folder-lock registry (re-entrant per thread within the process) -----------------------
struct LockEntry {
  int fd = -1;
  int depth = 0;
  std::thread::id owner;
};
std::mutex g_lock_mu;
std::condition_variable g_lock_cv;
std::map<std::string, LockEntry>& lock_table() {
  static std::map<std::string, LockEntry> t;
  return t;
}

void remove_stale_temporaries(int dirfd) {
  const int fd = ::dup(dirfd);
  if (fd < 0) return;
  DIR* d = ::fdopendir(fd);
  if (!d) {
    ::close(fd);
    return;
  }
  while (dirent* e = ::readdir(d)) {
    if (std::strncmp(e->d_name, kTmpPrefix, sizeof kTmpPrefix - 1) == 0) ::unlinkat(dirfd, e->d_name, 0);
  }
  ::closedir(d);
}

// ---- SIGBUS guard for mapped files ---------------------------------------------------------------
struct MapSlot {
  std::atomic<int> used{0};
  std::atomic<std::uintptr_t> base{0};
  std::atomic<std::size_t> length{0};
  std::atomic<int> faulted{0};
};
MapSlot g_maps[256];
struct sigaction g_old_bus;
std::once_flag g_bus_once;
std::size_t g_page = 4096;

extern "C" void on_sigbus(int sig, siginfo_t* si, void* ctx) {
  const auto addr = reinterpret_cast<std::uintptr_t>(si->si_addr);
  for (auto& m : g_maps) {
    if (m.used.load() != 2) continue;
    const std::uintptr_t base = m.base.load();
    const std::size_t len = m.length.load();
    if (addr >= base && addr < base + len) {
      // The file shrank under the mapping: zero pages over the rest of it, so the reader can finish
      // and then report (MemoryStore::check_intact).
      const std::uintptr_t page = addr & ~(static_cast<std::uintptr_t>(g_page) - 1);
      const std::uintptr_t end = (base + len + g_page - 1) & ~(static_cast<std::uintptr_t>(g_page) - 1);
      ::mmap(reinterpret_cast<void*>(page), end - page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
      m.faulted.store(1);
      return;
    }
  }
  // Not one of ours: behave as before we were installed.
  if ((g_old_bus.sa_flags & SA_SIGINFO) && g_old_bus.sa_sigaction) {
    g_old_bus.sa_sigaction(sig, si, ctx);
  } else if (g_old_bus.sa_handler != SIG_DFL && g_old_bus.sa_handler != SIG_IGN) {
    g_old_bus.sa_handler(sig);
  } else {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    ::sigaction(SIGBUS, &dfl, nullptr);  // the faulting instruction runs again and ends the process
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------------
std::size_t checked_mul(std::size_t a, std::size_t b, const char* what) {
  std::size_t r;
  if (__builtin_mul_overflow(a, b, &r))
    throw InvalidArgument(detail::concat(what, ": ", a, " x ", b, " does not fit in 64 bits"));
  return r;
}

std::size_t checked_add(std::size_t a, std::size_t b, const char* what) {
  std::size_t r;
  if (__builtin_add_overflow(a, b, &r))
    throw InvalidArgument(detail::concat(what, ": ", a, " + ", b, " does not fit in 64 bits"));
  return r;
}

void check_fits_in_memory(std::size_t bytes, const char* what) {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return;
  const std::size_t ram = static_cast<std::size_t>(pages) * static_cast<std::size_t>(page);
  if (bytes > ram)
    throw InvalidArgument(detail::concat(what, " needs ", bytes, " bytes, more than this machine's memory (", ram,
                                         " bytes)"));
}

// ------------------------------------------------------------------------------------------------
InputFile::InputFile(const std::string& path, const std::string& what) : path_(path), what_(what) {
  auto bad = [&](const std::string& why) { return IoError("cannot read " + what + " '" + path + "': " + why); };
  if (path.empty()) throw bad("the path is empty");
  fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);  // O_NONBLOCK: a FIFO does not hang
  if (fd_ < 0) throw bad(errno_text(errno));
  struct stat sb {};
  if (::fstat(fd_, &sb) != 0) {
    const int e = errno;
    ::close(fd_);
    throw bad(errno_text(e));
  }
  if (!S_ISREG(sb.st_mode)) {
    ::close(fd_);
    throw bad(std::string("it is a ") + file_type(sb.st_mode) + ", not a regular file");
  }
  const int flags = ::fcntl(fd_, F_GETFL);
  if (flags >= 0) ::fcntl(fd_, F_SETFL, flags & ~O_NONBLOCK);
  size_ = static_cast<std::size_t>(sb.st_size);
}

InputFile::~InputFile() {
  if (fd_ >= 0) ::close(fd_);
}

void InputFile::read_at(std::size_t offset, void* out, std::size_t n) const {
  auto* p = static_cast<char*>(out);
  while (n > 0) {
    const ssize_t r = ::pread(fd_, p, n, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw IoError("cannot read " + what_ + " '" + path_ + "': " + errno_text(errno));
    }
    if (r == 0)
      throw IoError("cannot read " + what_ + " '" + path_ + "': the file ended early (was it changed while being read?)");
    p += r;
    n -= static_cast<std::size_t>(r);
    offset += static_cast<std::size_t>(r);
  }
}

std::string InputFile::read_all(std::size_t max_bytes) const {
  if (size_ > max_bytes)
    throw IoError(detail::concat("cannot read ", what_, " '", path_, "': ", size_, " bytes, more than the limit of ",
                                 max_bytes));
  std::string s(size_, '\0');
  read_at(0, s.data(), size_);
  return s;
}

// ------------------------------------------------------------------------------------------------
std::string resolve_output(const std::string& path) {
  if (path.empty()) throw IoError("cannot write '': the output path is empty");
  std::string p = path;
  for (int hops = 0;; ++hops) {
    struct stat sb {};
    if (::lstat(p.c_str(), &sb) != 0) {
      if (errno == ENOENT) return p;
      throw IoError("cannot write '" + path + "': " + errno_text(errno));
    }
    if (!S_ISLNK(sb.st_mode)) return p;
    if (hops >= 40) throw IoError("cannot write '" + path + "': too many levels of symbolic links");
    std::string target(PATH_MAX, '\0');
    const ssize_t n = ::readlink(p.c_str(), target.data(), target.size());
    if (n < 0) throw IoError("cannot write '" + path + "': " + errno_text(errno));
    target.resize(static_cast<std::size_t>(n));
    p = (!target.empty() && target[0] == '/') ? target : dirname_of(p) + "/" + target;
  }
}

namespace {
struct FileIdentity {
  bool exists = false;
  dev_t dev = 0;
  ino_t ino = 0;
  std::string canonical;  // resolved folder + name, for files that do not exist yet
};

FileIdentity identify(const std::string& path) {
  FileIdentity id;
  const std::string target = resolve_output(path);
  struct stat sb {};
  if (::stat(target.c_str(), &sb) == 0) {
    id.exists = true;
    id.dev = sb.st_dev;
    id.ino = sb.st_ino;
  }
  char buf[PATH_MAX];
  const std::string dir = dirname_of(target);
  id.canonical = (::realpath(dir.c_str(), buf) ? std::string(buf) : dir) + "/" + basename_of(target);
  return id;
}

bool same_file(const FileIdentity& a, const FileIdentity& b) {
  if (a.exists && b.exists) return a.dev == b.dev && a.ino == b.ino;
  return a.canonical == b.canonical;
}
}  // namespace

void check_distinct(const std::vector<std::pair<std::string, std::string>>& inputs,
                    const std::vector<std::pair<std::string, std::string>>& outputs) {
  std::vector<std::pair<const std::pair<std::string, std::string>*, FileIdentity>> ins, outs;
  for (const auto& i : inputs) {
    if (i.second.empty()) continue;
    try {
      ins.emplace_back(&i, identify(i.second));
    } catch (const IoError&) {
      // an input that cannot even be looked up cannot be an output either; opening it reports why
    }
  }
  for (const auto& o : outputs) {
    if (o.second.empty()) continue;
    FileIdentity id = identify(o.second);
    for (const auto& [in, iid] : ins)
      if (same_file(id, iid))
        throw InvalidArgument("the " + o.first + " '" + o.second + "' is the same file as the " + in->first + " '" +
                              in->second + "'; refusing to overwrite an input");
    for (const auto& [other, oid] : outs)
      if (same_file(id, oid))
        throw InvalidArgument("the " + o.first + " '" + o.second + "' is the same file as the " + other->first + " '" +
                              other->second + "'; give different paths");
    outs.emplace_back(&o, id);
  }
}

// ------------------------------------------------------------------------------------------------
FolderLock::FolderLock(const std::string& path) {
  const std::string dir = dirname_of(resolve_output(path));
  char buf[PATH_MAX];
  if (!::realpath(dir.c_str(), buf))
    throw IoError("cannot write '" + path + "': folder '" + dir + "': " + errno_text(errno));
  key_ = buf;
  std::unique_lock<std::mutex> lk(g_lock_mu);
  LockEntry& e = lock_table()[key_];
  if (e.depth > 0 && e.owner == std::this_thread::get_id()) {
    ++e.depth;
    return;
  }
  g_lock_cv.wait(lk, [&] { return e.depth == 0; });
  e.depth = 1;
  e.owner = std::this_thread::get_id();
  lk.unlock();
  auto give_up = [&](const std::string& why) {
    std::lock_guard<std::mutex> g(g_lock_mu);
    e.depth = 0;
    g_lock_cv.notify_all();
    return IoError("cannot write '" + path + "': cannot lock folder '" + key_ + "': " + why);
  };
  const int fd = ::open(key_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw give_up(errno_text(errno));
  while (::flock(fd, LOCK_EX) != 0) {
    if (errno == EINTR) continue;
    const int err = errno;
    ::close(fd);
    throw give_up(errno_text(err));
  }
  e.fd = fd;
  remove_stale_temporaries(fd);  // we hold the lock: every temporary here belongs to a dead writer
}

FolderLock::~FolderLock() {
  std::lock_guard<std::mutex> g(g_lock_mu);
  LockEntry& e = lock_table()[key_];
  if (--e.depth == 0) {
    ::flock(e.fd, LOCK_UN);
    ::close(e.fd);
    e.fd = -1;
    g_lock_cv.notify_all();
  }
}

// ------------------------------------------------------------------------------------------------
namespace {
// A file written to its temporary (fsynced, closed) under the folder lock, not yet renamed.
struct Staged {
  std::string path, target, tmp, dir;
  int slot = -1;
  std::unique_ptr<FolderLock> lock;
};

thread_local OutputBatch* t_batch = nullptr;

IoError write_error(const std::string& path, const std::string& target, const std::string& why) {
  return IoError("cannot write '" + path + "'" + (target != path ? " (-> '" + target + "')" : std::string()) + ": " +
                 why);
}

// progress (may be null): called with the bytes written and the file's size after every 64 MiB written.
Staged stage_file(const std::string& path, const std::vector<std::pair<const void*, std::size_t>>& parts,
                  const std::function<void(std::size_t, std::size_t)>* progress = nullptr) {
  Staged st;
  st.path = path;
  st.target = resolve_output(path);
  const std::string& target = st.target;
  auto bad = [&](const std::string& why) { return write_error(path, target, why); };
  struct stat sb {};
  if (::stat(target.c_str(), &sb) == 0 && !S_ISREG(sb.st_mode))
    throw bad(std::string("it is a ") + file_type(sb.st_mode) + "; outputs must be regular files or new paths");
  st.lock = std::make_unique<FolderLock>(target);
  const bool exists = ::stat(target.c_str(), &sb) == 0;  // again, under the lock
  if (exists && !S_ISREG(sb.st_mode))
    throw bad(std::string("it is a ") + file_type(sb.st_mode) + "; outputs must be regular files or new paths");
  // A file the user may not write is not replaced through the folder's permission (the rename would
  // do it: issue 23, a 0444 output replaced by a user who could not write it).
  if (exists && ::access(target.c_str(), W_OK) != 0)
    throw bad("permission denied: the file is not writable for you (the rename would replace it anyway); "
              "change its mode or write elsewhere");
  st.dir = dirname_of(target);
  const std::string& dir = st.dir;
  std::string tmp;
  int fd = -1, slot = -1;
  for (int attempt = 0; fd < 0; ++attempt) {
    char name[64];
    std::snprintf(name, sizeof name, "%s%016llx", kTmpPrefix, static_cast<unsigned long long>(next_random()));
    tmp = dir + "/" + name;
    slot = register_cleanup(tmp, false);  // before it exists: a signal right after the open removes it
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);  // the umask applies
    if (fd < 0) {
      const int err = errno;
      unregister_cleanup(slot);
      if (err != EEXIST || attempt > 100)
        throw bad("cannot create a temporary file in '" + dir + "': " + errno_text(err));
    }
  }
  auto fail = [&](const std::string& what) {
    const std::string reason = errno_text(errno);
    ::close(fd);
    ::unlink(tmp.c_str());
    unregister_cleanup(slot);
    throw bad(what + ": " + reason);
  };
  std::size_t total = 0, written = 0;
  for (const auto& part : parts) total += part.second;
  for (const auto& [ptr, len] : parts) {
    const auto* p = static_cast<const char*>(ptr);
    std::size_t left = len;
    while (left > 0) {
      const ssize_t w = ::write(fd, p, std::min<std::size_t>(left, std::size_t{64} << 20));
      if (w < 0) {
        if (errno == EINTR) continue;
        fail("write failed");
      }
      p += w;
      left -= static_cast<std::size_t>(w);
      written += static_cast<std::size_t>(w);
      if (progress) (*progress)(written, total);
    }
  }
  if (exists) {  // a replaced file keeps its owner, group and mode
    if (::fchown(fd, sb.st_uid, sb.st_gid) != 0) {
      // not permitted (another owner): the new file is ours, with the old mode
    }
    if (::fchmod(fd, sb.st_mode & 07777) != 0) fail("cannot keep the file's mode");
  }
  if (::fsync(fd) != 0) fail("fsync failed");
  if (::close(fd) != 0) {
    const std::string reason = errno_text(errno);
    ::unlink(tmp.c_str());
    unregister_cleanup(slot);
    throw bad("close failed: " + reason);
  }
  st.tmp = tmp;
  st.slot = slot;
  return st;
}

void discard(Staged& st) {
  if (st.slot < 0) return;
  ::unlink(st.tmp.c_str());
  unregister_cleanup(st.slot);
  st.slot = -1;
}

void commit_staged(Staged& st) {
  if (std::rename(st.tmp.c_str(), st.target.c_str()) != 0) {
    const std::string reason = errno_text(errno);
    discard(st);
    throw write_error(st.path, st.target, "rename failed: " + reason);
  }
  unregister_cleanup(st.slot);
  st.slot = -1;
  const int dfd = ::open(st.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {  // make the rename durable; best effort
    ::fsync(dfd);
    ::close(dfd);
  }
}
}  // namespace

struct OutputBatch::Impl {
  std::vector<Staged> staged;
  OutputBatch* outer = nullptr;
  std::function<void(std::size_t, std::size_t)> progress;
};

OutputBatch::OutputBatch() : impl_(std::make_unique<Impl>()) {
  impl_->outer = t_batch;
  t_batch = this;
}

OutputBatch::~OutputBatch() {
  for (Staged& st : impl_->staged) discard(st);
  t_batch = impl_->outer;
}

void OutputBatch::on_progress(std::function<void(std::size_t, std::size_t)> progress) {
  impl_->progress = std::move(progress);
}

std::size_t OutputBatch::staged() const { return impl_->staged.size(); }

void OutputBatch::commit() {
  if (t_batch == this) t_batch = impl_->outer;  // later writes on this thread go straight to their files
  for (Staged& st : impl_->staged) commit_staged(st);
  impl_->staged.clear();
}

void write_file_atomically(const std::string& path, const std::vector<std::pair<const void*, std::size_t>>& parts) {
  // Inside a batch, its progress callback (OutputBatch::on_progress) follows the writing.
  Staged st = stage_file(path, parts, t_batch && t_batch->impl_->progress ? &t_batch->impl_->progress : nullptr);
  if (t_batch) {
    t_batch->impl_->staged.push_back(std::move(st));
    return;
  }
  commit_staged(st);
}

namespace detail {
void write_file_now(const std::string& path, const std::vector<std::pair<const void*, std::size_t>>& parts) {
  Staged st = stage_file(path, parts);
  commit_staged(st);
}
}  // namespace detail

// ------------------------------------------------------------------------------------------------
TempPath::TempPath(std::string path) : path_(std::move(path)), slot_(register_cleanup(path_, false)) {}
TempPath::~TempPath() {
  ::unlink(path_.c_str());
  unregister_cleanup(slot_);
}

TempFolder::TempFolder() {
  const char* t = std::getenv("TMPDIR");
  const std::string base = std::string(t && *t ? t : "/tmp");
  for (int attempt = 0;; ++attempt) {
    char name[64];
    std::snprintf(name, sizeof name, "/assocmem.%016llx", static_cast<unsigned long long>(next_random()));
    path_ = base + name;
    slot_ = register_cleanup(path_, true);  // before it exists: a signal right after mkdir removes it
    if (::mkdir(path_.c_str(), 0700) == 0) return;
    const int err = errno;
    unregister_cleanup(slot_);
    if (err != EEXIST || attempt > 100)
      throw IoError("cannot create a temporary folder in '" + base + "': " + errno_text(err));
  }
}
TempFolder::~TempFolder() {
  if (DIR* d = ::opendir(path_.c_str())) {
    while (dirent* e = ::readdir(d))
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0)
        ::unlink((path_ + "/" + e->d_name).c_str());
    ::closedir(d);
  }
  ::rmdir(path_.c_str());
  unregister_cleanup(slot_);
}

void install_signal_cleanup() {
  static std::once_flag once;  // installing twice would make the handler re-raise into itself
  std::call_once(once, [] {
    for (int i = 0; i < 3; ++i) {
      struct sigaction old {};
      ::sigaction(kCleanupSignals[i], nullptr, &old);
      if (old.sa_handler == SIG_IGN) continue;  // e.g. SIGHUP under nohup: leave it ignored
      g_old_actions[i] = old;
      struct sigaction sa {};
      sa.sa_handler = on_cleanup_signal;
      sigemptyset(&sa.sa_mask);
      ::sigaction(kCleanupSignals[i], &sa, nullptr);
    }
  });
}

// ------------------------------------------------------------------------------------------------
namespace detail {

void set_cleanup_child(pid_t pid) { g_child.store(pid); }

int guard_mapping(const void* base, std::size_t length) {
  std::call_once(g_bus_once, [] {
    const long ps = ::sysconf(_SC_PAGESIZE);
    if (ps > 0) g_page = static_cast<std::size_t>(ps);
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, &g_old_bus);
  });
  for (int i = 0; i < 256; ++i) {
    int expected = 0;
    if (g_maps[i].used.compare_exchange_strong(expected, 1)) {
      g_maps[i].base.store(reinterpret_cast<std::uintptr_t>(base));
      g_maps[i].length.store(length);
      g_maps[i].faulted.store(0);
      g_maps[i].used.store(2);
      return i;
    }
  }
  return -1;
}

void unguard_mapping(int slot) {
  if (slot >= 0) g_maps[slot].used.store(0);
}

bool mapping_faulted(int slot) { return slot >= 0 && g_maps[slot].faulted.load() != 0; }

}  // namespace detail

}  // namespace assocmem
