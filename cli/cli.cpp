// assocmem: the command-line tool (run by main.cpp). Subcommands store, shard, recall, simulate, capacity, demo
// (one file each); `--help` at every level.
// Exit codes: 0 success, 2 bad usage or input (a one-line message naming the problem), 1 a
// computation that could not finish (e.g. a solver reaching max steps).
#include "cli.hpp"

#include <cstdio>
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <new>
#include <string>
#include <vector>

#include "assocmem/error.hpp"
#include "assocmem/io.hpp"
#include "assocmem/version.hpp"
#include "common.hpp"

namespace assocmem::cli {
namespace fs = std::filesystem;

int run(int argc, char** argv) {
  CLI::App app{"assocmem: large associative memories (Krotov & Hopfield 2021): build memory stores, recall with "
               "models A, B and C, integrate the general two-layer network, measure capacity, run the demos."};
  app.require_subcommand(1);
  app.fallthrough();  // --json is accepted before or after the subcommand
  bool as_json = false;
  app.add_flag("--json", as_json, "Machine-readable JSON on stdout");
  app.set_version_flag("--version", std::string("assocmem ") + version());

  const std::vector<Command> commands = {add_store(app), add_shard(app), add_index(app), add_recall(app), add_simulate(app), add_capacity(app),
                                         add_demo(app)};

  install_signal_cleanup();  // SIGINT/SIGTERM/SIGHUP remove the temporaries in flight
  // One line on stderr naming the problem; with --json also an error object on stdout.
  auto fail = [&](int code, const std::string& msg) { return report_failure(code, msg, as_json); };
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    for (auto& ch : msg)
      if (ch == '\n') ch = ' ';
    for (int i = 1; i < argc; ++i) as_json = as_json || std::strcmp(argv[i], "--json") == 0;
    // The first word that is not an option, when it names no command: the nearest command by edit
    // distance ("recal" -> "recall"), and the list.
    for (int i = 1; i < argc; ++i) {
      if (argv[i][0] == '-') continue;
      const std::string word = argv[i];
      std::string best, names;
      std::size_t best_d = std::string::npos;
      bool known = false;
      for (const Command& c : commands) {
        const std::string name = c.app->get_name();
        names += (names.empty() ? "" : ", ") + name;
        known = known || name == word;
        // Levenshtein distance, two rows.
        std::vector<std::size_t> prev(name.size() + 1), cur(name.size() + 1);
        for (std::size_t j = 0; j <= name.size(); ++j) prev[j] = j;
        for (std::size_t a = 1; a <= word.size(); ++a) {
          cur[0] = a;
          for (std::size_t j = 1; j <= name.size(); ++j)
            cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (word[a - 1] == name[j - 1] ? 0 : 1)});
          std::swap(prev, cur);
        }
        if (prev[name.size()] < best_d) best_d = prev[name.size()], best = name;
      }
      if (!known) {
        std::string printable;  // no control bytes from the command line echoed to the terminal
        for (unsigned char ch : word) printable += (ch < 0x20 || ch == 0x7F) ? '?' : static_cast<char>(ch);
        return fail(2, "unknown command '" + printable + "'" +
                           (best_d <= std::max<std::size_t>(2, word.size() / 3) ? "; did you mean '" + best + "'?" : "") +
                           " (commands: " + names + "; see --help)");
      }
      break;
    }
    return fail(2, msg + " (see --help)");
  }
  try {
    for (const Command& c : commands)
      if (*c.app) {
        // Every file the command writes is staged and committed when it returns (nothing when it
        // throws): a command with several outputs writes all of them or none (assocmem/io.hpp).
        OutputBatch outputs;
        // Writing a large file (a store of 10^6 memories is half a gigabyte and more) shows a bar on a
        // terminal once the command has run for a second, as the long computations do (issue 23).
        ProgressBar writing("writing");
        outputs.on_progress([&](std::size_t done, std::size_t total) {
          writing.update(total ? double(done) / double(total) : 1.0);
        });
        const int rc = c.run(as_json);
        outputs.commit();
        return rc;
      }
  } catch (...) {
    std::string msg;
    const int code = exit_code_of(std::current_exception(), msg);
    return fail(code, msg);
  }
  return 0;
}

}  // namespace assocmem::cli
