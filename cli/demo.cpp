// assocmem demo: the runnable examples, which live in the Python package (assocmem.demos).
#include "common.hpp"

#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

namespace assocmem::cli {
namespace {

const char* const kDemoHelp =
    "Usage: assocmem demo NAME [options of the demo]\n"
    "  kanji   the main job: 3000 Kanji as 64x64 images, recalled from half-hidden and noisy cues\n"
    "  immune  N_f = 32 with 100,000 memories, model B from noisy cues\n"
    "  colour  N_f = 3: named colours and up to 10^6 colours\n"
    "assocmem demo NAME --help lists the options of a demo.\n";

int cmd_demo(const std::string& name, const std::vector<std::string>& rest, bool as_json) {
  if (name != "kanji" && name != "immune" && name != "colour")
    throw BadInput("unknown demo '" + name + "' (available: kanji, immune, colour)");
  std::vector<std::string> args = {"-m", "assocmem.demos." + name};
  args.insert(args.end(), rest.begin(), rest.end());
  if (as_json) args.push_back("--json");
  return run_python(args);
}

}  // namespace

Command add_demo(CLI::App& app) {
  auto name = std::make_shared<std::string>();
  auto* dm = app.add_subcommand("demo", "Run a demo: kanji (the main job), immune, colour (the paper's Section 4 problems)");
  dm->add_option("name", *name, "Demo name: kanji, immune or colour");
  dm->prefix_command();  // everything after the name goes to the demo, including --options and --help
  dm->allow_extras();
  dm->fallthrough(false);
  dm->set_help_flag();   // `assocmem demo kanji --help` shows the demo's own options
  return {dm, [dm, name](bool as_json) {
            const std::vector<std::string> rest = dm->remaining();
            const bool asks_help = *name == "--help" || *name == "-h" ||
                                   (name->empty() && !rest.empty() && (rest[0] == "--help" || rest[0] == "-h"));
            if (name->empty() || asks_help) {
              std::cout << kDemoHelp;
              if (!asks_help) std::fprintf(stderr, "assocmem: error: demo: a NAME is required (kanji, immune, colour)\n");
              return asks_help ? 0 : 2;
            }
            return cmd_demo(*name, rest, as_json);
          }};
}

}  // namespace assocmem::cli
