// Internal to the command: what every subcommand shares (errors, output, progress, plotting), and
// the registration of each subcommand (one file each: store.cpp, shard.cpp, recall.cpp, simulate.cpp,
// capacity.cpp, demo.cpp; cli.cpp parses and dispatches).
#pragma once

#include <chrono>
#include <exception>
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
Patterns read_patterns(const std::string& npy, const std::string& normalize);
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
