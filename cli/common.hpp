// Internal to the command: what every subcommand shares (errors, output, progress, plotting), and
// the registration of each subcommand (one file each: store.cpp, shard.cpp, recall.cpp, simulate.cpp,
// capacity.cpp, demo.cpp; cli.cpp parses and dispatches).
#pragma once

#include <charconv>
#include <chrono>
#include <exception>
#include <limits>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "assocmem/store.hpp"

namespace assocmem::cli {

using json = nlohmann::json;

/// Bad usage or input: exit code 2 with the message.
struct BadInput : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The check of every integer option. CLI11 2.1 converts integers with strtoll/strtoull in base 0: a value
/// past the type's range saturates ("99999999999999999999" became 2^63 - 1 steps, or a seed silently
/// changed), "-1" wraps into a huge unsigned, "010" is octal. This accepts decimal whole numbers within
/// [lo, hi] only (leading zeros read as decimal) and names the option, the range and the text otherwise
/// (issue 23). Attach it with ->transform() (->check() would drop the decimal rewrite).
template <class T>
CLI::Validator whole(T lo = std::numeric_limits<T>::min(), T hi = std::numeric_limits<T>::max()) {
  static_assert(std::is_integral_v<T>);
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        T v{};
        const char* end = text.data() + text.size();
        const auto [p, ec] = std::from_chars(text.data(), end, v);  // decimal, no sign for unsigned T
        if (ec == std::errc() && p == end && !text.empty() && v >= lo && v <= hi) {
          text = std::to_string(v);  // "010" is 10 (CLI11 would read it as octal 8)
          return {};
        }
        return "must be a whole number in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got '" + text + "'";
      },
      "", "whole");
}

/// A progress bar on stderr, drawn only on a terminal and only once the work has run for a second.
class ProgressBar {
 public:
  explicit ProgressBar(std::string what);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  void update(double fraction);
  /// Erases the bar drawn last (if any) so that the next line starts clean: emit() and report_failure()
  /// call it (a finished bar ran into the summary line).
  static void clear_drawn();

 private:
  std::string what_;
  std::chrono::steady_clock::time_point start_;
  bool drawn_ = false;
};

/// True on the ranks of an MPI job other than rank 0: they fail as rank 0 does and stay silent.
bool& quiet_errors();
/// The exit code of a failure (2 bad usage or input: BadInput, InvalidArgument, IoError, filesystem
/// errors; 1 otherwise) and its message.
int exit_code_of(std::exception_ptr failure, std::string& message);
/// One line on stderr naming the problem; with --json also {"error", "exit_code"} on stdout. Silent
/// when quiet_errors(). Returns code.
int report_failure(int code, const std::string& message, bool as_json);

/// JSON text of j; bytes that are not UTF-8 become U+FFFD (file names are arbitrary bytes).
std::string dump(const json& j);
/// Writes j (with --json) or text to stdout.
void emit(bool as_json, const json& j, const std::string& text);

/// Runs `python3 args...` (ASSOCMEM_PYTHON, default /usr/bin/python3; no shell). When the command
/// runs from a build tree, the package beside it (<exe dir>/../python) goes first on PYTHONPATH;
/// an installed command finds the installed package. Returns the exit status.
int run_python(const std::vector<std::string>& args);

/// Draws a PNG with `python3 -m assocmem.plot KIND data.csv out.png EXTRA...`, written to output
/// under the output rules of assocmem/io.hpp.
void draw_plot(const std::string& kind, const std::string& csv, const std::string& output,
               const std::vector<std::string>& extra);

/// The patterns of a .npy file as float32 rows, checked finite and normalised: "none", "l2" (unit
/// rows) or "sign" (+-1). BadInput names the file, pattern and element.
struct Patterns {
  std::vector<float> rows;
  std::size_t count = 0, cols = 0;
};
/// bar (optional): advanced after each stage (read, converted, checked, normalised: each a pass over the
/// data, the cost of a large file) to 0.8; the caller ends it.
Patterns read_patterns(const std::string& npy, const std::string& normalize, ProgressBar* bar = nullptr);
/// An in-memory store of those patterns (ids 0, 1, ...).
MemoryStore store_from_npy(const std::string& npy, DType dtype, const std::string& normalize);

/// A subcommand: registered on the app, run when given. run(as_json) returns the exit code.
struct Command {
  CLI::App* app;
  std::function<int(bool as_json)> run;
};
Command add_store(CLI::App& app);
Command add_recall(CLI::App& app);
Command add_simulate(CLI::App& app);
Command add_capacity(CLI::App& app);
Command add_demo(CLI::App& app);
Command add_shard(CLI::App& app);
Command add_index(CLI::App& app);

}  // namespace assocmem::cli
