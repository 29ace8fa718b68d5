// The assocmem command as a function, so that the program (main.cpp) and the fuzz target
// (fuzz/fuzz_inputs.cpp) run the same code.
#pragma once

namespace assocmem::cli {

/// Runs the command line; returns the exit code (0 success, 2 bad usage or input, 1 a computation
/// that could not finish).
int run(int argc, char** argv);

}  // namespace assocmem::cli
