# The core library's dependencies by layer (docs/architecture.md): libassocmem uses neither MPI nor FAISS,
# which live in the optional components assocmem_mpi and assocmem_ann, so a program that links only the
# core needs neither. Checked on the built archive: no undefined symbol of MPI (MPI_*, ompi_*) or FAISS.
# Usage: cmake -DNM=<nm> -DLIB=<libassocmem.a> -P layering.cmake
execute_process(COMMAND "${NM}" -u -C "${LIB}" OUTPUT_VARIABLE symbols RESULT_VARIABLE rc ERROR_QUIET)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "layering: ${NM} -u failed on ${LIB}")
endif()
string(REGEX MATCHALL "[^\n]*(MPI_|ompi_|faiss::)[^\n]*" found "${symbols}")
if(found)
  message(FATAL_ERROR "layering: the core library uses MPI or FAISS (belongs in assocmem_mpi / assocmem_ann):\n${found}")
endif()
message(STATUS "layering: the core library needs neither MPI nor FAISS")
