# The core library's dependencies by layer (docs/architecture.md): libassocmem uses neither MPI, FAISS,
# FreeType nor SUNDIALS, which live in the optional components assocmem_mpi, assocmem_ann, assocmem_glyphs
# and assocmem_bdf, so a program that links only the core needs none of them. Checked on the built archive:
# no undefined symbol of MPI (MPI_*, ompi_*), FAISS, FreeType (FT_*) or SUNDIALS (CVode*, N_V*, SUN*).
# Usage: cmake -DNM=<nm> -DLIB=<libassocmem.a> -P layering.cmake
execute_process(COMMAND "${NM}" -u -C "${LIB}" OUTPUT_VARIABLE symbols RESULT_VARIABLE rc ERROR_QUIET)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "layering: ${NM} -u failed on ${LIB}")
endif()
string(REGEX MATCHALL "[^\n]*( MPI_| ompi_|faiss::| FT_| CVode| N_V| SUN)[^\n]*" found "${symbols}")
if(found)
  message(FATAL_ERROR "layering: the core library uses MPI, FAISS, FreeType or SUNDIALS (belongs in "
                      "assocmem_mpi / assocmem_ann / assocmem_glyphs / assocmem_bdf):\n${found}")
endif()
message(STATUS "layering: the core library needs neither MPI, FAISS, FreeType nor SUNDIALS")
