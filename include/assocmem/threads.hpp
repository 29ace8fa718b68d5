// assocmem/threads.hpp - who runs assocmem's worker threads.
//
// A parallel call (the engines, the fused attention, the codes, training) splits its work into `workers`
// chunks and, by default, starts workers - 1 std::threads for them and runs the first itself. A host
// program with a thread pool of its own can run the chunks there instead: an OpenMP program (PyTorch is
// one) whose idle threads spin for milliseconds after each of its parallel regions would otherwise keep
// a core busy beside assocmem's threads. assocmem's Python module runs them in OpenMP's team once
// assocmem.torch is imported (assocmem.set_worker_pool), and back on assocmem's own threads in a process
// forked from it (OpenMP's team does not survive fork).
#pragma once

#include <cstddef>

namespace assocmem {

/// Runs work(job, w) once for every w in [0, workers), concurrently or one after another, and returns true
/// after the last has returned; or returns false at once, without running any, to decline the call (assocmem
/// then starts its own threads for it, e.g. for more workers than the host's pool has). `work` does not
/// throw (assocmem catches its workers' exceptions and re-throws the first on the calling thread). The
/// calling thread may run chunks itself.
using WorkerRunner = bool (*)(std::size_t workers, void* job, void (*work)(void* job, std::size_t worker));

/// Every parallel call from now on runs its workers with `runner`; nullptr restores assocmem's own
/// std::threads (the default). Process-wide; calls already running keep the runner they started with.
void set_worker_runner(WorkerRunner runner) noexcept;

/// The runner set by set_worker_runner (nullptr: assocmem's own threads).
WorkerRunner worker_runner() noexcept;

}  // namespace assocmem
