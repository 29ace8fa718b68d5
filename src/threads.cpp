// The process-wide worker runner (assocmem/threads.hpp); src/parallel.hpp reads it.
#include "assocmem/threads.hpp"

#include <atomic>

namespace assocmem {
namespace {
std::atomic<WorkerRunner> g_runner{nullptr};
}  // namespace

void set_worker_runner(WorkerRunner runner) noexcept { g_runner.store(runner, std::memory_order_release); }

WorkerRunner worker_runner() noexcept { return g_runner.load(std::memory_order_acquire); }

}  // namespace assocmem
