// Internal: run fn(worker, begin, end) over [0, n) split into contiguous chunks, one per thread.
// Exceptions from workers are captured and the first is re-thrown on the caller (hnswlib style).
#pragma once

#include <algorithm>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace assocmem::detail {

inline int resolve_threads(int requested) {
  if (requested > 0) return requested;
  const unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

template <class Fn>
void parallel_chunks(std::size_t n, int threads, Fn&& fn) {
  const std::size_t workers = std::max<std::size_t>(1, std::min<std::size_t>(static_cast<std::size_t>(threads), n));
  if (workers == 1) {
    fn(std::size_t{0}, std::size_t{0}, n);
    return;
  }
  std::exception_ptr error;
  std::mutex mu;
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  auto run = [&](std::size_t w) {
    const std::size_t begin = n * w / workers, end = n * (w + 1) / workers;
    try {
      fn(w, begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!error) error = std::current_exception();
    }
  };
  for (std::size_t w = 1; w < workers; ++w) pool.emplace_back(run, w);
  run(0);
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace assocmem::detail
