// assocmem: the command-line tool (cli/cli.cpp).
#include "cli.hpp"

int main(int argc, char** argv) { return assocmem::cli::run(argc, argv); }
