// What every subcommand shares: errors, output, progress bar, Python for plots and demos.
#include "common.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <new>

#include "assocmem/error.hpp"
#include "assocmem/io.hpp"
#include "assocmem/npy.hpp"

namespace assocmem::cli {

namespace {
bool g_bar_on_screen = false;  // a bar's line is on stderr, not yet erased
}
ProgressBar::ProgressBar(std::string what) : what_(std::move(what)), start_(std::chrono::steady_clock::now()) {}
ProgressBar::~ProgressBar() {
  if (drawn_) clear_drawn();
}
void ProgressBar::clear_drawn() {
  if (!g_bar_on_screen) return;
  std::fprintf(stderr, "\r\033[K");
  std::fflush(stderr);
  g_bar_on_screen = false;
}
void ProgressBar::update(double fraction) {
  if (!isatty(STDERR_FILENO)) return;
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (s < 1.0) return;
  const int width = 30, done = static_cast<int>(fraction * width + 0.5);
  std::fprintf(stderr, "\r%s [%s%s] %3.0f%% %.0fs", what_.c_str(), std::string(static_cast<std::size_t>(done), '#').c_str(),
               std::string(static_cast<std::size_t>(width - done), ' ').c_str(), 100 * fraction, s);
  std::fflush(stderr);
  drawn_ = true;
  g_bar_on_screen = true;
}

namespace {
// <exe dir>/../python when it holds the package (a build tree: build/cli/assocmem, build/python).
std::string build_tree_package_dir() {
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  const std::filesystem::path dir = exe.parent_path().parent_path() / "python";
  return std::filesystem::exists(dir / "assocmem" / "__init__.py", ec) ? dir.string() : std::string();
}
}  // namespace

int run_python(const std::vector<std::string>& args) {
  const char* env = std::getenv("ASSOCMEM_PYTHON");
  const std::string python = env && *env ? env : "/usr/bin/python3";
  std::vector<std::string> owned = {python};
  owned.insert(owned.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : owned) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string package = build_tree_package_dir();
  const char* old = std::getenv("PYTHONPATH");
  const std::string path = package.empty() ? (old ? old : "") : package + (old && *old ? ":" + std::string(old) : "");
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("could not start " + python + ": fork failed");
  if (pid == 0) {
    if (!package.empty()) setenv("PYTHONPATH", path.c_str(), 1);
    execv(argv[0], argv.data());
    std::fprintf(stderr, "assocmem: error: cannot run %s: %s (set ASSOCMEM_PYTHON)\n", python.c_str(), std::strerror(errno));
    _exit(127);
  }
  detail::set_cleanup_child(pid);  // an interrupt stops the child before removing its files
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  detail::set_cleanup_child(0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

// JSON text of j. File names and option values are arbitrary bytes on Linux: bytes that are not UTF-8
// become U+FFFD instead of making dump() throw (found by fuzz_inputs).
std::string dump(const json& j) { return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n"; }

void emit(bool as_json, const json& j, const std::string& text) {
  ProgressBar::clear_drawn();
  if (as_json) std::cout << dump(j);
  else std::cout << text;
}

// Draws a PNG with `python3 -m assocmem.plot KIND data.csv out.png ARGS...`: the CSV and the PNG live
// in a private temporary folder (removed on exit and on SIGINT/SIGTERM), and the PNG is then written
// to `output` under the output rules of assocmem/io.hpp (atomic, no special files).
void draw_plot(const std::string& kind, const std::string& csv, const std::string& output,
               const std::vector<std::string>& extra) {
  const TempFolder folder;
  const TempPath data(folder.path() + "/data.csv"), png(folder.path() + "/plot.png");
  detail::write_file_now(data.path(), {{csv.data(), csv.size()}});  // the plotter reads it now
  std::vector<std::string> args = {"-m", "assocmem.plot", kind, data.path(), png.path()};
  args.insert(args.end(), extra.begin(), extra.end());
  if (run_python(args) != 0)
    throw IoError("could not draw '" + output + "': the plot needs /usr/bin/python3 with matplotlib and assocmem");
  const InputFile in(png.path(), "plot");
  const std::string bytes = in.read_all(std::size_t{1} << 30);
  write_file_atomically(output, {{bytes.data(), bytes.size()}});
}

bool& quiet_errors() {
  static bool quiet = false;
  return quiet;
}

int exit_code_of(std::exception_ptr failure, std::string& message) {
  try {
    std::rethrow_exception(failure);
  } catch (const BadInput& e) {
    message = e.what();
  } catch (const InvalidArgument& e) {
    message = e.what();
  } catch (const IoError& e) {
    message = e.what();
  } catch (const std::filesystem::filesystem_error& e) {
    message = e.what();
  } catch (const std::bad_alloc&) {
    message = "out of memory";
    return 1;
  } catch (const std::exception& e) {
    message = e.what();
    return 1;
  }
  return 2;
}

int report_failure(int code, const std::string& message, bool as_json) {
  if (quiet_errors()) return code;
  ProgressBar::clear_drawn();
  // Control bytes (from file names or arguments) are not sent to the terminal: each is shown as '?'
  // (issue 23: an escape sequence in a file name reached stderr as it was). JSON escapes them itself.
  std::string shown = message;
  for (char& ch : shown)
    if ((static_cast<unsigned char>(ch) < 0x20 && ch != '\t') || ch == 0x7F) ch = '?';
  std::fprintf(stderr, "assocmem: %s: %s\n", code == 2 ? "error" : "failed", shown.c_str());
  if (as_json) std::cout << dump(json{{"error", message}, {"exit_code", code}});
  return code;
}

Patterns read_patterns(const std::string& npy, const std::string& normalize, ProgressBar* bar) {
  auto stage = [&](double fraction) {
    if (bar) bar->update(fraction);
  };
  const NpyArray arr = read_npy(npy);
  stage(0.2);
  Patterns p{arr.to_float32(), arr.rows, arr.cols};
  stage(0.5);
  // Every value finite (a NaN would pass silently through sign or l2 normalisation).
  for (std::size_t k = 0; k < p.rows.size(); ++k)
    if (!std::isfinite(p.rows[k]))
      throw BadInput("'" + npy + "': pattern " + std::to_string(k / p.cols) + " element " + std::to_string(k % p.cols) +
                     " is NaN or Inf");
  stage(0.65);
  if (normalize == "l2") {
    for (std::size_t i = 0; i < p.count; ++i) {
      float* r = &p.rows[i * p.cols];
      double s = 0;
      for (std::size_t j = 0; j < p.cols; ++j) s += double(r[j]) * r[j];
      if (s == 0) throw BadInput("--normalize l2: pattern " + std::to_string(i) + " of '" + npy + "' is zero");
      const float inv = static_cast<float>(1.0 / std::sqrt(s));
      for (std::size_t j = 0; j < p.cols; ++j) r[j] *= inv;
    }
  } else if (normalize == "sign") {
    for (auto& x : p.rows) x = x > 0 ? 1.0f : -1.0f;
  } else if (normalize != "none") {
    throw BadInput("--normalize must be none, l2 or sign, got '" + normalize + "'");
  }
  stage(0.8);
  return p;
}

MemoryStore store_from_npy(const std::string& npy, DType dtype, const std::string& normalize) {
  ProgressBar bar("reading");  // on a terminal, once reading a large file has taken a second
  const Patterns p = read_patterns(npy, normalize, &bar);
  MemoryStore s(p.cols, dtype);
  try {
    s.append(p.rows.data(), p.count);
  } catch (const InvalidArgument& e) {
    throw BadInput("'" + npy + "': " + e.what() + (dtype == DType::Bits ? " (use --normalize sign)" : ""));
  }
  bar.update(1.0);
  return s;
}

}  // namespace assocmem::cli
