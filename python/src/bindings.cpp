// Python bindings (pybind11): assocmem._core. The pure-Python package (python/assocmem) re-exports
// these names, adds the aliases and the plots. Arrays come in without a copy when they are already
// C-contiguous of the right dtype; results go out without a copy (the buffers move into numpy).
// Long calls release the GIL. C++ errors become ValueError (InvalidArgument), OSError (IoError),
// assocmem.SolverError (a RuntimeError) and RuntimeError (other assocmem::Error).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdlib>
#include <chrono>
#include <limits>
#include <memory>
#include <mutex>
#include <type_traits>
#include <optional>
#include <string>
#include <vector>

#include "assocmem/attention.hpp"
#ifdef ASSOCMEM_WITH_ANN
#include "assocmem/ann.hpp"
#endif
#ifdef ASSOCMEM_WITH_MPI
#include "assocmem/distributed.hpp"
#endif
#include "assocmem/binary.hpp"
#include "assocmem/capacity.hpp"
#include "assocmem/codes.hpp"
#include "assocmem/dynamics.hpp"
#include "assocmem/engine.hpp"
#include "assocmem/glyphs.hpp"
#include "assocmem/models.hpp"
#include "assocmem/io.hpp"
#include "assocmem/layered.hpp"
#include "assocmem/retriever.hpp"
#include "assocmem/store.hpp"
#include "assocmem/threads.hpp"
#include "assocmem/version.hpp"

#ifdef ASSOCMEM_WITH_OPENMP_WORKERS
namespace assocmem::python {
void use_openmp_workers();  // openmp_workers.cpp: OpenMP's team; assocmem's own threads in a forked child
}
#endif

namespace py = pybind11;
using namespace assocmem;

namespace {

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using F64 = py::array_t<double, py::array::c_style | py::array::forcecast>;

template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, heap->data(), owner);
}

// Large output arrays (the memories' gradients of assocmem.torch: 164 MB per call for a batch of 64
// elements of 10k x 64 memories) are taken from a few recently freed ones. A fresh allocation of that size
// is a new mapping whose pages the kernel zero-fills on first touch, every call (glibc keeps freed blocks
// for reuse only below 32 MB); at batch 64, K = 10k that was 13% of HopfieldPooling's forward + backward
// and 6% of Hopfield's (README). At most kBlocks blocks and kBytes bytes are kept; a request takes the smallest kept block
// of at least its size and at most 4/3 of it. Arrays below kLarge come from numpy as before.
// assocmem.torch.empty_cache() frees the kept blocks (release()).
class LargeBuffers {
 public:
  static constexpr std::size_t kLarge = std::size_t(32) << 20, kBytes = std::size_t(1) << 30, kBlocks = 4;
  static constexpr std::size_t kHeader = 64;  // the block's size, before the 64-byte aligned data

  static void* take(std::size_t bytes) {
    if (bytes > (std::numeric_limits<std::size_t>::max() >> 2)) throw std::bad_alloc();
    {
      std::lock_guard<std::mutex> lock(mutex());
      auto& kept = blocks();
      std::size_t best = kept.size();
      for (std::size_t i = 0; i < kept.size(); ++i)
        if (size_of(kept[i]) >= bytes && size_of(kept[i]) <= bytes / 3 * 4 &&
            (best == kept.size() || size_of(kept[i]) < size_of(kept[best])))
          best = i;
      if (best < kept.size()) {
        char* base = kept[best];
        held() -= size_of(base);
        kept.erase(kept.begin() + static_cast<std::ptrdiff_t>(best));
        return base + kHeader;
      }
    }
    char* base = static_cast<char*>(std::aligned_alloc(kHeader, kHeader + (bytes + kHeader - 1) / kHeader * kHeader));
    if (!base) throw std::bad_alloc();
    *reinterpret_cast<std::size_t*>(base) = bytes;
    return base + kHeader;
  }

  /// Frees every kept block; returns the bytes freed.
  static std::size_t release() {
    std::lock_guard<std::mutex> lock(mutex());
    const std::size_t freed = held();
    for (char* base : blocks()) std::free(base);
    blocks().clear();
    held() = 0;
    return freed;
  }
  static std::size_t kept_bytes() {
    std::lock_guard<std::mutex> lock(mutex());
    return held();
  }

  static void give(void* data) {
    char* base = static_cast<char*>(data) - kHeader;
    std::lock_guard<std::mutex> lock(mutex());
    auto& kept = blocks();
    kept.push_back(base);
    held() += size_of(base);
    while (!kept.empty() && (kept.size() > kBlocks || held() > kBytes)) {  // the oldest go first
      held() -= size_of(kept.front());
      std::free(kept.front());
      kept.erase(kept.begin());
    }
  }

 private:
  static std::size_t size_of(const char* base) { return *reinterpret_cast<const std::size_t*>(base); }
  // Never destroyed: arrays may be freed by Python after static destructors ran at exit.
  static std::mutex& mutex() { static auto* m = new std::mutex; return *m; }
  static std::vector<char*>& blocks() { static auto* b = new std::vector<char*>; return *b; }
  static std::size_t& held() { static std::size_t h = 0; return h; }
};

// An uninitialised array that the library writes in full: the workers' writes are its first touch (no
// zero-filling of, say, 256 MB under the GIL first); large ones from LargeBuffers.
template <class T>
py::array_t<T> uninitialised(std::vector<py::ssize_t> shape) {
  std::size_t bytes = sizeof(T);
  for (auto n : shape)
    if (n < 0 || __builtin_mul_overflow(bytes, static_cast<std::size_t>(n), &bytes)) throw std::bad_alloc();
  if (bytes < LargeBuffers::kLarge) return py::array_t<T>(shape);
  void* data = LargeBuffers::take(bytes);
  py::capsule owner(data, [](void* p) { LargeBuffers::give(p); });
  return py::array_t<T>(shape, static_cast<T*>(data), owner);
}
template <class T>
py::array_t<T> gradient_array(std::size_t rows, std::size_t cols) {
  return uninitialised<T>({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
}

py::array_t<double> vec_out(const Vector& v) {
  return to_numpy(std::vector<double>(v.data(), v.data() + v.size()), {v.size()});
}

Vector vec_in(const F64& a, const char* name) {
  if (a.ndim() != 1) throw InvalidArgument(std::string(name) + " must be 1-D, got " + std::to_string(a.ndim()) + " dimensions");
  return Eigen::Map<const Vector>(a.data(), a.shape(0));
}

Matrix mat_in(const F64& a, const char* name) {
  if (a.ndim() != 2) throw InvalidArgument(std::string(name) + " must be 2-D (rows x columns), got " + std::to_string(a.ndim()) + " dimensions");
  return Eigen::Map<const Matrix>(a.data(), a.shape(0), a.shape(1));
}

// A batch of row vectors: (d,) -> 1 x d, (B, d) -> B x d. Remembers whether it was 1-D.
// Real numbers only: complex (its imaginary part), strings and datetimes were cast to float32 silently
// by forcecast (issue 23). The array's own dtype kind is checked first.
F32 real_f32(const py::array& a, const char* what) {
  const char kind = a.dtype().kind();
  if (kind != 'b' && kind != 'i' && kind != 'u' && kind != 'f')
    throw py::type_error(std::string(what) + " must be real numbers, got dtype " + py::str(a.dtype()).cast<std::string>());
  return F32::ensure(a);
}

// Ids: non-negative whole numbers (-1 and 1.7 were cast to 2^64 - 1 and 1).
std::vector<std::uint64_t> ids_in(const py::array& a) {
  const char kind = a.dtype().kind();
  if (kind != 'i' && kind != 'u') throw py::type_error("ids must be integers, got dtype " + py::str(a.dtype()).cast<std::string>());
  const auto v = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
  std::vector<std::uint64_t> out(static_cast<std::size_t>(v.size()));
  if (kind == 'u') {
    const auto u = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>::ensure(a);
    std::copy(u.data(), u.data() + u.size(), out.begin());
    return out;
  }
  for (py::ssize_t i = 0; i < v.size(); ++i) {
    if (v.data()[i] < 0) throw InvalidArgument("ids: entry " + std::to_string(i) + " is " + std::to_string(v.data()[i]) +
                                               "; ids are non-negative");
    out[static_cast<std::size_t>(i)] = static_cast<std::uint64_t>(v.data()[i]);
  }
  return out;
}

struct Batch {
  F32 arr;
  std::size_t rows = 0, cols = 0;
  bool one_d = false;
};
Batch batch_in(const F32& a, std::size_t dim, const char* name) {
  Batch b{a, 0, 0, a.ndim() == 1};
  if (a.ndim() == 1) {
    b.rows = 1;
    b.cols = static_cast<std::size_t>(a.shape(0));
  } else if (a.ndim() == 2) {
    b.rows = static_cast<std::size_t>(a.shape(0));
    b.cols = static_cast<std::size_t>(a.shape(1));
  } else {
    throw InvalidArgument(std::string(name) + " must have shape (d,) or (batch, d), got " + std::to_string(a.ndim()) + " dimensions");
  }
  if (b.cols != dim)
    throw InvalidArgument(std::string(name) + " have dimension " + std::to_string(b.cols) + " but the memories have " + std::to_string(dim));
  if (b.rows == 0) throw InvalidArgument(std::string(name) + ": the batch is empty");
  return b;
}


InteractionSpec interaction(const std::string& F, double n, double beta) { return {parse_interaction(F), n, beta}; }

EngineOptions engine_options(int threads, const std::string& kernel) {
  EngineOptions o;
  o.threads = threads;
  o.kernel = parse_kernel(kernel);
  return o;
}

// --------------------------------------------------------------------------------------------
// Retrieval from Python: the Python layer (assocmem/__init__.py) handles shapes (leading batch
// dimensions, 1-D queries) and dtypes; these take 2-D float32 batches and return a dict of arrays.

using U8 = py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>;

class StoreUse {
 public:
  explicit StoreUse(py::object store)
      : obj_(std::move(store)), ptr_(obj_.cast<const MemoryStore*>()),
        lease_(nonempty(*ptr_)) {}
  StoreUse(const StoreUse&) = delete;
  StoreUse& operator=(const StoreUse&) = delete;
  const MemoryStore& get() const { return *ptr_; }
  const py::object& object() const { return obj_; }

 private:
  static const MemoryStore& nonempty(const MemoryStore& s) {
    ASSOCMEM_CHECK_ARG(s.size() > 0, "store: the memory is empty (no patterns)");
    return s;
  }
  py::object obj_;  // keeps the Python store alive
  const MemoryStore* ptr_;
  detail::StoreLease lease_;  // MemoryStore.append and close refuse while the model lives (users() > 0)
};

std::size_t batch_rows(const F32& q, std::size_t dim, const char* what) {
  if (q.ndim() != 2) throw InvalidArgument(std::string(what) + " must be 2-D here");
  if (static_cast<std::size_t>(q.shape(1)) != dim)
    throw InvalidArgument(std::string(what) + " have dimension " + std::to_string(q.shape(1)) + " but the memories have " +
                          std::to_string(dim));
  if (q.shape(0) == 0) throw InvalidArgument(std::string(what) + ": the batch is empty");
  return static_cast<std::size_t>(q.shape(0));
}

// Options of one call; None = the model's default (retrieve_defaults).
RetrieveOptions options_in(std::optional<long> steps, std::optional<double> tol, std::optional<double> step,
                           std::size_t top_k, bool energy, std::optional<double> beta, std::optional<U8> clamp) {
  RetrieveOptions o;
  o.max_steps = steps;
  o.tol = tol;
  o.step = step;
  o.top_k = top_k;
  o.energy = energy;
  o.beta = beta;
  if (clamp) {
    if (clamp->ndim() != 1) throw InvalidArgument("clamp must be a 1-D boolean array");
    o.clamp.assign(clamp->data(), clamp->data() + clamp->shape(0));
  }
  return o;
}

MemoryMask mask_in(const std::optional<U8>& mask, std::size_t batch, std::size_t K) {
  if (!mask) return {};
  if (mask->ndim() != 2 || static_cast<std::size_t>(mask->shape(1)) != K ||
      (mask->shape(0) != 1 && static_cast<std::size_t>(mask->shape(0)) != batch))
    throw InvalidArgument("mask must have shape (" + std::to_string(K) + ",) or (batch..., " + std::to_string(K) + ")");
  return {mask->data(), static_cast<std::size_t>(mask->shape(0))};
}

// Runs f(monitor) without the GIL. The monitor, called on this thread between tiles, takes the GIL
// to run Python's signal handlers (Ctrl-C: KeyboardInterrupt) and the progress callback; an
// exception from either cancels the call within one tile and is raised here.
template <class F>
auto monitored(const py::object& progress, F&& f) {
  std::optional<py::error_already_set> pending;
  Monitor monitor = [&](const Progress& p) {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) {
      pending.emplace();
      return false;
    }
    if (!progress.is_none()) {
      try {
        progress(p.step, p.max_steps, p.fraction, p.active);
      } catch (py::error_already_set& e) {
        pending.emplace(std::move(e));
        return false;
      }
    }
    return true;
  };
  try {
    py::gil_scoped_release nogil;
    return f(monitor);
  } catch (const Cancelled&) {
    if (pending) throw std::move(*pending);
    throw;
  }
}

// A Retrieval as a dict of numpy arrays (moved, not copied): states (n, dim) float32, steps,
// stop (uint8 codes: 0 converged, 1 max_steps, 2 blew_up), last_change, energy (or None),
// top_ids (n, k) int64 padded with -1, top_weights (n, k) padded with 0, k = min(top_k, K).
py::dict result_out(Retrieval&& r, std::size_t top_k, std::size_t K) {
  const auto B = static_cast<py::ssize_t>(r.batch);
  py::dict out;
  std::vector<float> states(r.states.begin(), r.states.end());
  out["states"] = to_numpy(std::move(states), {B, static_cast<py::ssize_t>(r.dim)});
  out["steps"] = to_numpy(std::vector<std::int64_t>(r.steps.begin(), r.steps.end()), {B});
  std::vector<std::uint8_t> stop(r.batch);
  for (std::size_t i = 0; i < r.batch; ++i) stop[i] = static_cast<std::uint8_t>(r.stop[i]);
  out["stop"] = to_numpy(std::move(stop), {B});
  out["last_change"] = to_numpy(std::move(r.last_change), {B});
  out["energy"] = r.energy.empty() ? py::object(py::none()) : py::object(to_numpy(std::move(r.energy), {B}));
  if (top_k) {
    const std::size_t k = std::min(top_k, K);
    std::vector<std::int64_t> ids(checked_mul(r.batch, k, "batch x top_k"), -1);
    std::vector<double> w(r.batch * k, 0.0);
    for (std::size_t i = 0; i < r.batch; ++i)
      for (std::size_t j = 0; j < r.top[i].size() && j < k; ++j) {
        const std::uint64_t id = r.top[i][j].id;
        if (id > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
          throw InvalidArgument("top_ids: id " + std::to_string(id) + " does not fit int64 (ids >= 2^63 cannot be reported)");
        ids[i * k + j] = static_cast<std::int64_t>(id);
        w[i * k + j] = r.top[i][j].weight;
      }
    out["top_ids"] = to_numpy(std::move(ids), {B, static_cast<py::ssize_t>(k)});
    out["top_weights"] = to_numpy(std::move(w), {B, static_cast<py::ssize_t>(k)});
  } else {
    out["top_ids"] = py::none();
    out["top_weights"] = py::none();
  }
  out["max_weight"] = r.max_weight.empty() ? py::object(py::none()) : py::object(to_numpy(std::move(r.max_weight), {B}));
  if (!r.certificates.empty()) {
    std::vector<double> dw(r.batch), se(r.batch);
    std::vector<std::int64_t> cand(r.batch), fb(r.batch);
    for (std::size_t i = 0; i < r.batch; ++i) {
      dw[i] = r.certificates[i].discarded_weight;
      se[i] = r.certificates[i].state_error;
      cand[i] = static_cast<std::int64_t>(r.certificates[i].candidates);
      fb[i] = r.certificates[i].fallback_steps;
    }
    out["discarded_weight"] = to_numpy(std::move(dw), {B});
    out["state_error"] = to_numpy(std::move(se), {B});
    out["candidates"] = to_numpy(std::move(cand), {B});
    out["fallback_steps"] = to_numpy(std::move(fb), {B});
  }
  return out;
}

struct AnnOptionsArg {
  std::string kind;
  std::size_t lists, probes, links, ef_search;
  std::uint64_t seed;
};

// Approximate retrieval's candidate source: an ANN index over the keys (assocmem/ann.hpp, FAISS), built with
// the default options on first use (the retriever's factory) or with the given ones by index_candidates.
Retriever::CandidateFactory ann_factory() {
  return [](const MemoryStore& keys) -> std::shared_ptr<const CandidateSource> {
#ifdef ASSOCMEM_WITH_ANN
    return AnnIndex::build(keys, AnnOptions{});
#else
    (void)keys;
    throw InvalidArgument("approximate: this build of assocmem has no FAISS (assocmem_ann; Debian: libfaiss-dev)");
#endif
  };
}

// The ANN index in use: kind, lists and probes or links and ef_search, bytes (empty before one is built).
py::dict ann_info(const Retriever& r) {
  py::dict d;
#ifdef ASSOCMEM_WITH_ANN
  const std::shared_ptr<const CandidateSource> src = r.candidates();
  const auto* index = dynamic_cast<const AnnIndex*>(src.get());
  if (!index) return d;
  const AnnOptions& used = index->options();
  d["kind"] = used.kind;
  if (used.kind == "ivf") {
    d["lists"] = used.lists;
    d["probes"] = used.probes;
  } else {
    d["links"] = used.links;
    d["ef_search"] = used.ef_search;
  }
  d["bytes"] = index->bytes();
#else
  (void)r;
#endif
  return d;
}

// Models B and C: the library's retrieval context (assocmem/retriever.hpp) over the Python stores, which
// this keeps alive and leased (StoreUse). The retriever's engine, codes and candidates are its own.
class PyModelB {
 public:
  PyModelB(py::object keys, std::optional<py::object> values, double beta, int threads, const std::string& kernel)
      : keys_(std::move(keys)), values_(values ? std::make_unique<StoreUse>(std::move(*values)) : nullptr),
        ret_(Retriever::model_b(keys_.get(), values_ ? &values_->get() : nullptr, beta,
                                engine_options(threads, kernel))) {
    if (!values_) ret_.set_candidate_factory(ann_factory());
  }
  py::dict retrieve(const F32& q, std::optional<long> steps, std::optional<double> tol, std::optional<double> step,
                    std::size_t top_k, bool energy, std::optional<double> beta, std::optional<U8> mask,
                    std::optional<U8> clamp, const py::object& progress, std::optional<double> certify,
                    std::optional<std::size_t> approximate) const {
    const std::size_t n = batch_rows(q, ret_.dim(), "queries");
    RetrieveOptions o = options_in(steps, tol, step, top_k, energy, beta, clamp);
    o.mask = mask_in(mask, n, ret_.size());
    o.certify = certify;
    o.approximate = approximate;
    Retrieval r = monitored(progress, [&](Monitor& m) {
      o.monitor = m;
      return ret_.retrieve(q.data(), n, o);
    });
    return result_out(std::move(r), top_k, ret_.size());
  }
  /// Where the codes of certified retrieval came from: the file beside the store, or built here.
  std::string codes_source() const { return ret_.codes_source(); }
  /// Builds (or rebuilds) the ANN index of approximate retrieval; its description.
  py::dict index_candidates(const AnnOptionsArg& a) const {
    if (values_) throw InvalidArgument("approximate: not supported yet with a value store");
#ifdef ASSOCMEM_WITH_ANN
    AnnOptions o;
    o.kind = a.kind;
    o.lists = a.lists;
    o.probes = a.probes;
    o.links = a.links;
    o.ef_search = a.ef_search;
    o.seed = a.seed;
    {
      py::gil_scoped_release nogil;
      ret_.set_candidates(AnnIndex::build(keys_.get(), o));
    }
    return ann_info(ret_);
#else
    (void)a;
    ann_factory()(keys_.get());  // throws: no FAISS in this build
    return {};
#endif
  }
  py::dict candidates_index() const { return ann_info(ret_); }
  py::tuple attention(const F32& q, std::size_t top_k, std::optional<double> beta, std::optional<U8> mask) const {
    const ModelBEngine& eng = ret_.engine_b();
    const std::size_t n = batch_rows(q, eng.dim(), "queries");
    const MemoryMask mm = mask_in(mask, n, eng.size());
    // Ctrl-C (Python's signal handlers, run by the monitor between tiles) ends the pass within a tile.
    AttentionPartial part =
        monitored(py::none(), [&](Monitor& m) { return eng.partial(q.data(), n, top_k, mm, beta, m); });
    Retrieval r;
    r.batch = n;
    r.top.resize(n);
    for (std::size_t b = 0; b < n; ++b)
      for (const auto& [id, w] : part.top_weights(b)) r.top[b].push_back({id, w});
    r.steps.assign(n, 0);
    r.stop.assign(n, StopReason::MaxSteps);
    r.last_change.assign(n, 0.0);
    py::dict d = result_out(std::move(r), top_k, eng.size());
    return py::make_tuple(d["top_ids"], d["top_weights"]);
  }
  py::array_t<double> energy(const F32& s, std::optional<double> beta, std::optional<U8> mask) const {
    const ModelBEngine& eng = ret_.engine_b();
    const std::size_t n = batch_rows(s, eng.dim(), "states");
    const MemoryMask mm = mask_in(mask, n, eng.size());
    std::vector<double> e =
        monitored(py::none(), [&](Monitor& m) { return eng.energy(s.data(), n, mm, beta, m); });
    return to_numpy(std::move(e), {static_cast<py::ssize_t>(n)});
  }
  const ModelBEngine& engine() const { return ret_.engine_b(); }
  py::object keys() const { return keys_.object(); }
  py::object values() const { return values_ ? values_->object() : py::none(); }

 private:
  StoreUse keys_;
  std::unique_ptr<StoreUse> values_;
  mutable Retriever ret_;  // set_candidates: the retriever is thread-safe
};

class PyModelC {
 public:
  PyModelC(py::object store, const std::string& F, double n, double beta, double alpha, int threads,
           const std::string& kernel)
      : store_(std::move(store)),
        ret_(Retriever::model_c(store_.get(), interaction(F, n, beta), alpha, engine_options(threads, kernel))) {}
  py::dict retrieve(const F32& q, std::optional<long> steps, std::optional<double> tol, std::optional<double> step,
                    bool energy, std::optional<U8> mask, std::optional<U8> clamp, const py::object& progress,
                    std::optional<double> certify) const {
    const std::size_t n = batch_rows(q, ret_.dim(), "queries");
    RetrieveOptions o = options_in(steps, tol, step, 0, energy, std::nullopt, clamp);
    o.mask = mask_in(mask, n, ret_.size());
    o.certify = certify;
    Retrieval r = monitored(progress, [&](Monitor& m) {
      o.monitor = m;
      return ret_.retrieve(q.data(), n, o);
    });
    return result_out(std::move(r), 0, ret_.size());
  }
  std::string codes_source() const { return ret_.codes_source(); }
  py::array_t<double> energy(const F32& s, std::optional<U8> mask) const {
    const ModelCEngine& eng = ret_.engine_c();
    const std::size_t n = batch_rows(s, eng.dim(), "states");
    const MemoryMask mm = mask_in(mask, n, eng.size());
    std::vector<double> e = monitored(py::none(), [&](Monitor& m) { return eng.energy(s.data(), n, mm, m); });
    return to_numpy(std::move(e), {static_cast<py::ssize_t>(n)});
  }
  const ModelCEngine& engine() const { return ret_.engine_c(); }
  py::object store() const { return store_.object(); }

 private:
  StoreUse store_;
  Retriever ret_;
};

// Model A over packed bits (the library's Retriever packs a float store of +-1 memories once).
class PyModelA {
 public:
  PyModelA(py::object store, const std::string& F, double n, double beta, std::optional<F64> current, int threads)
      : store_(std::move(store)),
        ret_(Retriever::model_a(store_.get(), interaction(F, n, beta), current ? vec_in(*current, "current") : Vector(),
                                engine_options(threads, "auto"))) {}
  py::dict retrieve(const F32& cues, std::optional<long> steps, std::optional<double> tol, std::optional<std::string> order,
                    std::uint64_t seed, bool energy, std::optional<U8> clamp, const py::object& progress) const {
    const std::size_t n = batch_rows(cues, ret_.dim(), "cues");
    const std::vector<std::int8_t> s = to_spins(cues.data(), n, ret_.dim(), "cues");
    RetrieveOptions o = options_in(steps, tol, std::nullopt, 0, energy, std::nullopt, clamp);
    if (order) o.order = parse_update_order(*order);
    o.seed = seed;
    Retrieval r = monitored(progress, [&](Monitor& m) {
      o.monitor = m;
      return ret_.retrieve(s.data(), n, o);
    });
    return result_out(std::move(r), 0, ret_.size());
  }
  py::array_t<double> energy(const F32& states) const {
    const std::size_t n = batch_rows(states, ret_.dim(), "states");
    const std::vector<std::int8_t> s = to_spins(states.data(), n, ret_.dim(), "states");
    std::vector<double> e(n);
    for (std::size_t r = 0; r < n; ++r) e[r] = engine().energy(&s[r * ret_.dim()]);
    return to_numpy(std::move(e), {static_cast<py::ssize_t>(n)});
  }
  const ModelAEngine& engine() const { return ret_.engine_a(); }
  py::object store() const { return store_.object(); }

 private:
  StoreUse store_;
  Retriever ret_;
};

// --------------------------------------------------------------------------------------------
struct PyTrajectory {
  py::array_t<double> t, v, h, energy, energy_rate;
  long steps, non_psd_steps;
  double first_non_psd_t;
  std::string reason;
};

// The options of simulate() from Python's keyword arguments (one definition for both networks).
SimulateOptions simulate_options(double t_end, const std::string& method, double rtol, double atol, double dt,
                                 long max_steps, double fixed_point_tol, long record_every) {
  SimulateOptions o;
  o.method = parse_method(method);
  o.t_end = t_end;
  o.rtol = rtol;
  o.atol = atol;
  o.dt = dt;
  o.max_steps = max_steps;
  o.fixed_point_tol = fixed_point_tol;
  o.record_every = record_every;
  return o;
}

// Runs run(o) with Ctrl-C reaching it: every 50 ms of integration the step callback runs Python's signal
// handlers; a KeyboardInterrupt ends the run (Cancelled from the callback, then the Python error).
template <class Run>
auto simulate_interruptibly(SimulateOptions& o, const Run& run) {
  return monitored(py::none(), [&](Monitor& m) {
    auto last = std::chrono::steady_clock::now();
    o.on_step = [&](double t) {
      const auto now = std::chrono::steady_clock::now();
      if (now - last < std::chrono::milliseconds(50)) return;
      last = now;
      Progress p;
      p.fraction = o.t_end > 0 ? t / o.t_end : 0.0;
      if (!m(p)) throw Cancelled("simulate cancelled");
    };
    return run(o);
  });
}

py::array_t<double> rows_out(const std::vector<Vector>& rows) {
  const std::size_t n = rows.size(), d = n ? static_cast<std::size_t>(rows[0].size()) : 0;
  std::vector<double> out(n * d);
  for (std::size_t i = 0; i < n; ++i) std::copy(rows[i].data(), rows[i].data() + d, &out[i * d]);
  return to_numpy(std::move(out), {static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(d)});
}

}  // namespace

namespace {

// Differentiable attention (assocmem.torch): 2-D C-contiguous arrays of one dtype, no copies.
template <class T>
using CArr = py::array_t<T, py::array::c_style>;

// The inputs of an attention: n queries of dimension d, K keys and values of dimension dv; S, the storage
// of keys and values: T itself, or std::uint16_t for bfloat16 (T = float).
template <class T, class S>
void set_inputs(AttentionArgs<T>& a, const T* q, const S* k, const S* v, py::ssize_t n, py::ssize_t d, py::ssize_t K,
                py::ssize_t dv) {
  a.q = q;
  a.n = std::size_t(n);
  a.d = std::size_t(d);
  if constexpr (std::is_same_v<S, std::uint16_t>) {
    a.k_bf16 = k;
    a.v_bf16 = v;
  } else {
    a.k = k;
    a.v = v;
  }
  a.K = std::size_t(K);
  a.dv = std::size_t(dv);
}

// S: the storage of keys and values: T itself, or std::uint16_t for bfloat16 (T = float).
template <class T, class S>
AttentionArgs<T> attention_args(const CArr<T>& q, const CArr<S>& k, const CArr<S>& v, double beta,
                                const std::optional<U8>& mask, int threads) {
  if (q.ndim() != 2 || k.ndim() != 2 || v.ndim() != 2) throw InvalidArgument("attention: queries, keys and values must be 2-D");
  if (k.shape(1) != q.shape(1))
    throw InvalidArgument("attention: keys have dimension " + std::to_string(k.shape(1)) + " but queries " +
                          std::to_string(q.shape(1)));
  if (v.shape(0) != k.shape(0))
    throw InvalidArgument("attention: " + std::to_string(v.shape(0)) + " values for " + std::to_string(k.shape(0)) + " keys");
  AttentionArgs<T> a;
  set_inputs(a, q.data(), k.data(), v.data(), q.shape(0), q.shape(1), k.shape(0), v.shape(1));
  a.beta = beta;
  a.mask = mask_in(mask, a.n, a.K);
  a.threads = threads;
  return a;
}

template <class T, class S = T>
void bind_attention_dtype(py::module_& m, const char* suffix) {
  m.def((std::string("attention_forward_") + suffix).c_str(),
        [](const CArr<T>& q, const CArr<S>& k, const CArr<S>& v, double beta, std::optional<U8> mask, int threads) {
          const AttentionArgs<T> a = attention_args<T, S>(q, k, v, beta, mask, threads);
          std::vector<T> out(checked_mul(a.n, a.dv, "queries x value dim"));
          std::vector<double> lse(a.n);
          {
            py::gil_scoped_release nogil;
            attention_forward(a, out.data(), lse.data());
          }
          return py::make_tuple(to_numpy(std::move(out), {py::ssize_t(a.n), py::ssize_t(a.dv)}),
                                to_numpy(std::move(lse), {py::ssize_t(a.n)}));
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("beta"), py::arg("mask"), py::arg("threads"),
        "(softmax(beta q k^T) v, log-sum-exp per query), fused over tiles (assocmem/attention.hpp).");
  m.def((std::string("log_sum_exp_backward_") + suffix).c_str(),
        [](const CArr<T>& q, const CArr<S>& k, double beta, std::optional<U8> mask, int threads, const CArr<double>& lse,
           const CArr<double>& dlse) {
          const AttentionArgs<T> a = attention_args<T, S>(q, k, k, beta, mask, threads);
          if (lse.ndim() != 1 || dlse.ndim() != 1 || std::size_t(lse.shape(0)) != a.n || std::size_t(dlse.shape(0)) != a.n)
            throw InvalidArgument("log_sum_exp_backward: lse and dlse must have one entry per query");
          auto dq = gradient_array<T>(a.n, a.d), dk = gradient_array<T>(a.K, a.d);
          T *dqp = dq.mutable_data(), *dkp = dk.mutable_data();
          double dbeta = 0;
          {
            py::gil_scoped_release nogil;
            log_sum_exp_backward(a, lse.data(), dlse.data(), dqp, dkp, &dbeta);
          }
          return py::make_tuple(dq, dk, dbeta);
        },
        py::arg("q"), py::arg("k"), py::arg("beta"), py::arg("mask"), py::arg("threads"), py::arg("lse"), py::arg("dlse"),
        "(dq, dk, dbeta) of sum(dlse o lse), lse = log sum exp(beta q k^T) per query.");
}

template <class T, class S = T>
void bind_spherical_dtype(py::module_& m, const char* suffix) {
  m.def((std::string("spherical_step_") + suffix).c_str(),
        [](const CArr<T>& v, const CArr<S>& k, const std::string& F, double n, double beta, double alpha, double step,
           std::optional<U8> mask, int threads, bool want_next) {
          AttentionArgs<T> a = attention_args<T, S>(v, k, k, 1.0, mask, threads);
          const AdditivePtr f = make_interaction(interaction(F, n, beta));
          std::vector<T> next(want_next ? a.n * a.d : 0);
          std::vector<double> energy(a.n);
          {
            py::gil_scoped_release nogil;
            spherical_step(a, *f, alpha, step, want_next ? next.data() : nullptr, energy.data());
          }
          py::object out = py::none();
          if (want_next) out = to_numpy(std::move(next), {py::ssize_t(a.n), py::ssize_t(a.d)});
          return py::make_tuple(out, to_numpy(std::move(energy), {py::ssize_t(a.n)}));
        },
        py::arg("v"), py::arg("k"), py::arg("F"), py::arg("n"), py::arg("beta"), py::arg("alpha"), py::arg("step"),
        py::arg("mask"), py::arg("threads"), py::arg("want_next"),
        "Model C's Euler step of eq. (22) from states v, and the energy (eq. 21) at v: (next or None, energy).");
  m.def((std::string("spherical_step_backward_") + suffix).c_str(),
        [](const CArr<T>& v, const CArr<S>& k, const std::string& F, double n, double beta, double alpha, double step,
           std::optional<U8> mask, int threads, std::optional<CArr<T>> dnext, std::optional<CArr<double>> denergy) {
          AttentionArgs<T> a = attention_args<T, S>(v, k, k, 1.0, mask, threads);
          if (dnext && (dnext->ndim() != 2 || std::size_t(dnext->shape(0)) != a.n || std::size_t(dnext->shape(1)) != a.d))
            throw InvalidArgument("spherical_step_backward: dnext must have the shape of v");
          if (denergy && (denergy->ndim() != 1 || std::size_t(denergy->shape(0)) != a.n))
            throw InvalidArgument("spherical_step_backward: denergy must have one entry per state");
          const AdditivePtr f = make_interaction(interaction(F, n, beta));
          auto dv = gradient_array<T>(a.n, a.d), dk = gradient_array<T>(a.K, a.d);
          T *dvp = dv.mutable_data(), *dkp = dk.mutable_data();
          {
            py::gil_scoped_release nogil;
            spherical_step_backward(a, *f, alpha, step, dnext ? dnext->data() : nullptr,
                                    denergy ? denergy->data() : nullptr, dvp, dkp);
          }
          return py::make_tuple(dv, dk);
        },
        py::arg("v"), py::arg("k"), py::arg("F"), py::arg("n"), py::arg("beta"), py::arg("alpha"), py::arg("step"),
        py::arg("mask"), py::arg("threads"), py::arg("dnext"), py::arg("denergy"),
        "(dv, dk) of sum(dnext o next) + sum(denergy o energy) of spherical_step.");
  m.def((std::string("attention_fixed_point_") + suffix).c_str(),
        [](const CArr<T>& q, const CArr<S>& k, double beta, std::optional<U8> mask, int threads, long max_updates,
           double tol) {
          const AttentionArgs<T> a = attention_args<T, S>(q, k, k, beta, mask, threads);
          std::vector<T> states(a.n * a.d);
          Retrieval r;
          {
            py::gil_scoped_release nogil;
            r = attention_fixed_point(a, max_updates, tol, states.data());
          }
          bool converged = true;
          double change = 0;
          for (std::size_t b = 0; b < a.n; ++b) {
            converged = converged && r.converged(b);
            change = std::max(change, r.last_change[b]);  // NaN (no update) leaves it
          }
          return py::make_tuple(to_numpy(std::move(states), {py::ssize_t(a.n), py::ssize_t(a.d)}), converged, change);
        },
        py::arg("q"), py::arg("k"), py::arg("beta"), py::arg("mask"), py::arg("threads"), py::arg("max_updates"),
        py::arg("tol"),
        "Eq. (16) on the keys from q until each row's max |change| <= tol or max_updates: (states, all converged, "
        "the largest last change).");
}

// Batches of independent attentions (AttentionBatch): q (E, n, d), k (E, K, d), v (E, K, dv), betas (E,),
// mask (E, 1 or n, K) or None; C-contiguous, no copies.
template <class T, class S>
struct BatchArgs {
  AttentionArgs<T> a;
  AttentionBatch b;
};
// A layer norm of the key or value rows (RowNorm) from Python: eps None = no norm; weight and bias None or
// 1-D arrays of the row's length.
template <class T>
struct NormIn {
  std::optional<double> eps;
  std::optional<CArr<T>> weight, bias;
};
template <class T>
RowNorm<T> row_norm(const NormIn<T>& in, std::size_t c, const char* what) {
  if (!in.eps) {
    if (in.weight || in.bias) throw InvalidArgument(std::string(what) + ": weight or bias given without eps");
    return {};
  }
  for (const auto* x : {&in.weight, &in.bias})
    if (*x && ((*x)->ndim() != 1 || std::size_t((*x)->shape(0)) != c))
      throw InvalidArgument(std::string(what) + ": weight and bias must be 1-D of length " + std::to_string(c));
  return {true, *in.eps, in.weight ? in.weight->data() : nullptr, in.bias ? in.bias->data() : nullptr};
}

template <class T, class S>
BatchArgs<T, S> batch_args(const CArr<T>& q, const CArr<S>& k, const CArr<S>& v, const F64& betas,
                           const std::optional<U8>& mask, int threads, double dropout, std::uint64_t seed,
                           const std::optional<CArr<T>>& bias, const NormIn<T>& key_norm = {},
                           const NormIn<T>& value_norm = {}) {
  if (q.ndim() != 3 || k.ndim() != 3 || v.ndim() != 3)
    throw InvalidArgument("attention batch: queries, keys and values must be 3-D (elements, rows, dim)");
  const py::ssize_t E = q.shape(0);
  if (k.shape(0) != E || v.shape(0) != E || betas.ndim() != 1 || betas.shape(0) != E)
    throw InvalidArgument("attention batch: queries, keys, values and betas must have the same number of elements, got " +
                          std::to_string(E) + ", " + std::to_string(k.shape(0)) + ", " + std::to_string(v.shape(0)) +
                          ", " + std::to_string(betas.ndim() == 1 ? betas.shape(0) : -1));
  if (k.shape(2) != q.shape(2))
    throw InvalidArgument("attention batch: keys have dimension " + std::to_string(k.shape(2)) + " but queries " +
                          std::to_string(q.shape(2)));
  if (v.shape(1) != k.shape(1))
    throw InvalidArgument("attention batch: " + std::to_string(v.shape(1)) + " values for " + std::to_string(k.shape(1)) +
                          " keys");
  BatchArgs<T, S> r;
  AttentionArgs<T>& a = r.a;
  set_inputs(a, q.data(), k.data(), v.data(), q.shape(1), q.shape(2), k.shape(1), v.shape(2));
  a.beta = 1.0;
  a.threads = threads;
  a.dropout = dropout;
  a.dropout_seed = seed;
  a.key_norm = row_norm(key_norm, a.d, "key_norm");
  a.value_norm = row_norm(value_norm, a.dv, "value_norm");
  r.b.elements = std::size_t(E);
  r.b.q_stride = a.n * a.d;
  r.b.k_stride = a.K * a.d;
  r.b.v_stride = a.K * a.dv;
  r.b.betas = betas.data();
  if (mask) {
    if (mask->ndim() != 3 || mask->shape(0) != E || std::size_t(mask->shape(2)) != a.K ||
        (mask->shape(1) != 1 && std::size_t(mask->shape(1)) != a.n))
      throw InvalidArgument("attention batch: mask must have shape (" + std::to_string(E) + ", 1 or " +
                            std::to_string(a.n) + ", " + std::to_string(a.K) + ")");
    a.mask = {mask->data(), std::size_t(mask->shape(1))};
    r.b.mask_stride = a.mask.rows * a.K;
  }
  if (bias) {
    if (bias->ndim() != 3 || bias->shape(0) != E || std::size_t(bias->shape(2)) != a.K ||
        (bias->shape(1) != 1 && std::size_t(bias->shape(1)) != a.n))
      throw InvalidArgument("attention batch: bias must have shape (" + std::to_string(E) + ", 1 or " +
                            std::to_string(a.n) + ", " + std::to_string(a.K) + ")");
    a.bias = bias->data();
    a.bias_rows = std::size_t(bias->shape(1));
    r.b.bias_stride = a.bias_rows * a.K;
  }
  return r;
}

template <class T>
py::array_t<T> array3(std::size_t a, std::size_t b, std::size_t c) {
  return uninitialised<T>({py::ssize_t(a), py::ssize_t(b), py::ssize_t(c)});
}

template <class T, class S = T>
void bind_attention_batch_dtype(py::module_& m, const char* suffix) {
  m.def((std::string("attention_forward_batch_") + suffix).c_str(),
        [](const CArr<T>& q, const CArr<S>& k, const CArr<S>& v, const F64& betas, std::optional<U8> mask, int threads,
           double dropout, std::uint64_t seed, std::optional<CArr<T>> bias, std::optional<double> key_norm_eps,
           std::optional<CArr<T>> key_norm_weight, std::optional<CArr<T>> key_norm_bias,
           std::optional<double> value_norm_eps, std::optional<CArr<T>> value_norm_weight,
           std::optional<CArr<T>> value_norm_bias) {
          const auto r = batch_args<T, S>(q, k, v, betas, mask, threads, dropout, seed, bias,
                                          {key_norm_eps, key_norm_weight, key_norm_bias},
                                          {value_norm_eps, value_norm_weight, value_norm_bias});
          const std::size_t E = r.b.elements;
          auto out = array3<T>(E, r.a.n, r.a.dv);
          py::array_t<double> lse({py::ssize_t(E), py::ssize_t(r.a.n)});
          T* op = out.mutable_data();
          double* lp = lse.mutable_data();
          {
            py::gil_scoped_release nogil;
            attention_forward_batch(r.a, r.b, op, lp);
          }
          return py::make_tuple(out, lse);
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("betas"), py::arg("mask"), py::arg("threads"),
        py::arg("dropout") = 0.0, py::arg("seed") = 0, py::arg("bias") = py::none(),
        py::arg("key_norm_eps") = py::none(), py::arg("key_norm_weight") = py::none(),
        py::arg("key_norm_bias") = py::none(), py::arg("value_norm_eps") = py::none(),
        py::arg("value_norm_weight") = py::none(), py::arg("value_norm_bias") = py::none(),
        "Per element e: (softmax(betas[e] q[e] k[e]^T + bias[e]) v[e], log-sum-exp per query), fused over tiles, the "
        "elements split over the threads (assocmem/attention.hpp, AttentionBatch); dropout on the weights from seed; "
        "key_norm_* / value_norm_*: a layer norm of every key / value row (eps None: none), shared by the elements.");
  m.def((std::string("attention_backward_batch_") + suffix).c_str(),
        [](const CArr<T>& q, const CArr<S>& k, const CArr<S>& v, const F64& betas, std::optional<U8> mask, int threads,
           const CArr<T>& out, const CArr<double>& lse, const CArr<T>& dout, double dropout, std::uint64_t seed,
           std::optional<CArr<T>> bias, std::optional<double> key_norm_eps, std::optional<CArr<T>> key_norm_weight,
           std::optional<CArr<T>> key_norm_bias, std::optional<double> value_norm_eps,
           std::optional<CArr<T>> value_norm_weight, std::optional<CArr<T>> value_norm_bias) {
          const auto r = batch_args<T, S>(q, k, v, betas, mask, threads, dropout, seed, bias,
                                          {key_norm_eps, key_norm_weight, key_norm_bias},
                                          {value_norm_eps, value_norm_weight, value_norm_bias});
          const std::size_t E = r.b.elements, n = r.a.n;
          const auto shape_is = [](const auto& x, std::initializer_list<std::size_t> s) {
            if (std::size_t(x.ndim()) != s.size()) return false;
            std::size_t i = 0;
            for (std::size_t v2 : s)
              if (std::size_t(x.shape(py::ssize_t(i++))) != v2) return false;
            return true;
          };
          if (!shape_is(out, {E, n, r.a.dv}) || !shape_is(dout, {E, n, r.a.dv}) || !shape_is(lse, {E, n}))
            throw InvalidArgument("attention_backward_batch: out, lse and dout do not match the forward's shapes");
          const bool same = static_cast<const void*>(k.data()) == static_cast<const void*>(v.data()) && r.a.dv == r.a.d;
          auto dq = array3<T>(E, n, r.a.d), dk = array3<T>(E, r.a.K, r.a.d);
          py::array_t<T> dv = same ? dk : array3<T>(E, r.a.K, r.a.dv);
          py::array_t<double> dbeta{py::ssize_t(E)};
          std::optional<py::array_t<T>> dbias;
          if (bias) dbias = array3<T>(E, r.a.bias_rows, r.a.K);
          T *dqp = dq.mutable_data(), *dkp = dk.mutable_data(), *dvp = dv.mutable_data();
          T* dbiasp = dbias ? dbias->mutable_data() : nullptr;
          double* dbp = dbeta.mutable_data();
          // The norms' parameter gradients per element (E x d, E x dv), for the parameters given.
          const auto param = [&](bool wanted, std::size_t c) {
            return wanted ? std::optional<py::array_t<T>>(py::array_t<T>({py::ssize_t(E), py::ssize_t(c)})) : std::nullopt;
          };
          auto kg = param(r.a.key_norm.gamma, r.a.d), kb = param(r.a.key_norm.bias, r.a.d);
          auto vg = param(r.a.value_norm.gamma, r.a.dv), vb = param(r.a.value_norm.bias, r.a.dv);
          const auto ptr = [](std::optional<py::array_t<T>>& x) { return x ? x->mutable_data() : nullptr; };
          const RowNormGradients<T> dnorm{ptr(kg), ptr(kb), ptr(vg), ptr(vb)};
          {
            py::gil_scoped_release nogil;
            attention_backward_batch(r.a, r.b, out.data(), lse.data(), dout.data(), dqp, dkp, dvp, dbp, dbiasp, &dnorm);
          }
          const auto obj = [](std::optional<py::array_t<T>>& x) { return x ? py::object(*x) : py::object(py::none()); };
          return py::make_tuple(dq, dk, same ? py::object(py::none()) : py::object(dv), dbeta, obj(dbias), obj(kg),
                                obj(kb), obj(vg), obj(vb));
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("betas"), py::arg("mask"), py::arg("threads"), py::arg("out"),
        py::arg("lse"), py::arg("dout"), py::arg("dropout") = 0.0, py::arg("seed") = 0, py::arg("bias") = py::none(),
        py::arg("key_norm_eps") = py::none(), py::arg("key_norm_weight") = py::none(),
        py::arg("key_norm_bias") = py::none(), py::arg("value_norm_eps") = py::none(),
        py::arg("value_norm_weight") = py::none(), py::arg("value_norm_bias") = py::none(),
        "Per element: (dq, dk, dv, dbeta, dbias, dkey_norm_weight, dkey_norm_bias, dvalue_norm_weight, "
        "dvalue_norm_bias) of sum(dout o out), recomputing the scores from lse (and the dropout factors from seed); "
        "dk and dv are the raw rows' gradients (through the norms); when v is k (one array), dk holds dk + dv and dv "
        "is None; dbias None without a bias; the norms' gradients per element (E, d) or None where not given (zero "
        "for the value norm when it is the key norm on the same array).");
}

// The association matrix (attention_weights) and its backward pass, batched: q (E, n, d), k (E, K, d).
template <class T, class S = T>
void bind_attention_weights_dtype(py::module_& m, const char* suffix) {
  m.def((std::string("attention_weights_batch_") + suffix).c_str(),
        [](const CArr<T>& q, const CArr<S>& k, const F64& betas, std::optional<U8> mask, int threads,
           std::optional<CArr<T>> bias) {
          const auto r = batch_args<T, S>(q, k, k, betas, mask, threads, 0.0, 0, bias);
          auto P = array3<T>(r.b.elements, r.a.n, r.a.K);
          T* pp = P.mutable_data();
          {
            py::gil_scoped_release nogil;
            attention_weights_batch(r.a, r.b, pp);
          }
          return P;
        },
        py::arg("q"), py::arg("k"), py::arg("betas"), py::arg("mask"), py::arg("threads"), py::arg("bias") = py::none(),
        "Per element: the association matrix softmax(betas[e] q[e] k[e]^T + bias[e]) (masked memories 0), (E, n, K).");
  m.def((std::string("attention_weights_backward_batch_") + suffix).c_str(),
        [](const CArr<T>& q, const CArr<S>& k, const F64& betas, std::optional<U8> mask, int threads, const CArr<T>& P,
           const CArr<T>& dP, std::optional<CArr<T>> bias) {
          const auto r = batch_args<T, S>(q, k, k, betas, mask, threads, 0.0, 0, bias);
          const std::size_t E = r.b.elements, n = r.a.n, K = r.a.K;
          for (const auto* x : {&P, &dP})
            if (x->ndim() != 3 || std::size_t(x->shape(0)) != E || std::size_t(x->shape(1)) != n ||
                std::size_t(x->shape(2)) != K)
              throw InvalidArgument("attention_weights_backward_batch: P and dP must have shape (" + std::to_string(E) +
                                    ", " + std::to_string(n) + ", " + std::to_string(K) + ")");
          auto dq = array3<T>(E, n, r.a.d), dk = array3<T>(E, K, r.a.d);
          py::array_t<double> dbeta{py::ssize_t(E)};
          std::optional<py::array_t<T>> dbias;
          if (bias) dbias = array3<T>(E, r.a.bias_rows, K);
          T *dqp = dq.mutable_data(), *dkp = dk.mutable_data(), *dbiasp = dbias ? dbias->mutable_data() : nullptr;
          double* dbp = dbeta.mutable_data();
          {
            py::gil_scoped_release nogil;
            attention_weights_backward_batch(r.a, r.b, P.data(), dP.data(), dqp, dkp, dbp, dbiasp);
          }
          return py::make_tuple(dq, dk, dbeta, dbias ? py::object(*dbias) : py::object(py::none()));
        },
        py::arg("q"), py::arg("k"), py::arg("betas"), py::arg("mask"), py::arg("threads"), py::arg("P"), py::arg("dP"),
        py::arg("bias") = py::none(), "Per element: (dq, dk, dbeta, dbias) of sum(dP o P), P the association matrix.");
}

void bind_attention(py::module_& m) {
  bind_attention_weights_dtype<float>(m, "f32");
  bind_attention_weights_dtype<double>(m, "f64");
  bind_spherical_dtype<float>(m, "f32");
  bind_spherical_dtype<double>(m, "f64");
  bind_spherical_dtype<float, std::uint16_t>(m, "bf16");
  bind_attention_dtype<float, std::uint16_t>(m, "bf16");
  bind_attention_dtype<float>(m, "f32");
  bind_attention_dtype<double>(m, "f64");
  bind_attention_batch_dtype<float, std::uint16_t>(m, "bf16");
  bind_attention_batch_dtype<float>(m, "f32");
  bind_attention_batch_dtype<double>(m, "f64");
}

// Lagrangians of a layer (eqs. 3, 6, 11, 17).
void bind_lagrangians(py::module_& m) {
  // Lagrangians -------------------------------------------------------------------------------
  py::module_ L = m.def_submodule("lagrangians", "Lagrangians of a neuron layer (eqs. 3, 6, 11, 17): value, "
                                                 "activation (the gradient) and Hessian-vector product.");
  py::class_<Lagrangian, std::shared_ptr<Lagrangian>>(L, "Lagrangian",
                                                      "A Lagrangian L(x) of one layer; its gradient is the layer's "
                                                      "activation (eq. 3).")
      .def("value", [](const Lagrangian& l, const F64& x) { return l.value(vec_in(x, "x")); }, py::arg("x"),
           "L(x) for a 1-D array x.")
      .def("activation", [](const Lagrangian& l, const F64& x) { return vec_out(l.gradient(vec_in(x, "x"))); },
           py::arg("x"), "The activation dL/dx (eq. 3).")
      .def("hvp", [](const Lagrangian& l, const F64& x, const F64& u) { return vec_out(l.hvp(vec_in(x, "x"), vec_in(u, "u"))); },
           py::arg("x"), py::arg("u"), "The Hessian-vector product (d^2 L / dx dx) u.")
      .def("hessian_psd_at", [](const Lagrangian& l, const F64& x) { return l.hessian_psd_at(vec_in(x, "x")); },
           py::arg("x"), "True where the Hessian at x is positive semi-definite (so eq. 4 gives dE/dt <= 0).")
      .def_property_readonly("name", &Lagrangian::name, "Name with parameters, e.g. 'log_cosh(beta=2)'.")
      .def_property_readonly("psd_region", &Lagrangian::psd_region, "Where the Hessian is PSD, in words.")
      .def_property_readonly("additive", &Lagrangian::additive, "True for L = sum_i G(x_i) (eq. 6).")
      .def("__repr__", [](const Lagrangian& l) { return "<assocmem.lagrangians." + l.name() + ">"; });
  auto share = [](auto p) { return std::const_pointer_cast<Lagrangian>(std::static_pointer_cast<const Lagrangian>(p)); };
  L.def("identity", [=] { return share(lagrangians::identity()); }, "G(x) = x^2/2; activation x (model B's features).");
  L.def("abs", [=] { return share(lagrangians::abs()); }, "G(x) = |x|; activation Sign(x): binary neurons (eq. 7).");
  L.def("log_cosh", [=](double beta) { return share(lagrangians::log_cosh(beta)); }, py::arg("beta") = 1.0,
        "G(x) = log(cosh(beta x))/beta; activation tanh(beta x).");
  L.def("softplus", [=](double beta) { return share(lagrangians::softplus(beta)); }, py::arg("beta") = 1.0,
        "G(x) = log(1 + exp(beta x))/beta; activation sigmoid(beta x).");
  L.def("power", [=](double n) { return share(lagrangians::power(n)); }, py::arg("n"),
        "G(x) = x^n (integer n >= 1); PSD everywhere for even n, for x >= 0 for odd n >= 3.");
  L.def("rectified_power", [=](double n) { return share(lagrangians::rectified_power(n)); }, py::arg("n"),
        "G(x) = x^n for x >= 0, else 0 (real n >= 1).");
  L.def("exp", [=](double beta) { return share(lagrangians::exp(beta)); }, py::arg("beta") = 1.0,
        "G(x) = exp(beta x)/beta; activation exp(beta x).");
  L.def("log_sum_exp", [=](double beta) { return share(lagrangians::log_sum_exp(beta)); }, py::arg("beta") = 1.0,
        "L(x) = log(sum exp(beta x))/beta; activation softmax(beta x) (eqs. 11, 12). Stable at any beta.");
  L.def("spherical", [=] { return share(lagrangians::spherical()); },
        "L(x) = |x|; activation x/|x|, divisive normalisation (eqs. 17, 18, 20).");
  L.def("layer_norm", [=](double gamma, double eps, std::optional<F64> delta) {
          return share(lagrangians::layer_norm(gamma, eps, delta ? vec_in(*delta, "delta") : Vector()));
        },
        py::arg("gamma") = 1.0, py::arg("eps") = 1e-5, py::arg("delta") = py::none(),
        "Layer norm as in the Energy Transformer: L = D gamma sqrt(var(x) + eps) + delta.x.");
}

// The general network (eq. 1) and its trajectories.
void bind_network(py::module_& m) {
  // Network -----------------------------------------------------------------------------------
  py::class_<PyTrajectory>(m, "Trajectory", "A recorded run of the general network: arrays t (T,), v (T, N_f), "
                                            "h (T, N_h), energy (T,) from eq. (2), energy_rate (T,) from eq. (4).")
      .def_readonly("t", &PyTrajectory::t, "Times of the records, shape (T,).")
      .def_readonly("v", &PyTrajectory::v, "Feature currents, shape (T, N_f).")
      .def_readonly("h", &PyTrajectory::h, "Hidden currents, shape (T, N_h).")
      .def_readonly("energy", &PyTrajectory::energy, "Energy eq. (2) at each record, shape (T,).")
      .def_readonly("energy_rate", &PyTrajectory::energy_rate, "dE/dt from eq. (4) at each record, shape (T,).")
      .def_readonly("steps", &PyTrajectory::steps, "Accepted integration steps.")
      .def_readonly("non_psd_steps", &PyTrajectory::non_psd_steps,
                    "Steps at which a Hessian was not PSD (footnote 2: there eq. 4 does not guarantee descent).")
      .def_readonly("first_non_psd_t", &PyTrajectory::first_non_psd_t, "The first such time, nan if none.")
      .def_readonly("reason", &PyTrajectory::reason, "Why the run stopped: 'reached t_end' or 'fixed point'.")
      .def("__repr__", [](const PyTrajectory& t) {
        return "<Trajectory: " + std::to_string(t.t.size()) + " records, " + std::to_string(t.steps) + " steps, " + t.reason + ">";
      });

  py::class_<Network>(m, "Network",
                      "The general two-layer network of eq. (1): N_f feature neurons v, N_h hidden neurons h, "
                      "memories xi (N_h x N_f).")
      .def(py::init([](const F64& xi, std::shared_ptr<Lagrangian> feature, std::shared_ptr<Lagrangian> hidden,
                       double tau_f, double tau_h, std::optional<F64> current, double alpha) {
             NetworkParams p;
             p.tau_f = tau_f;
             p.tau_h = tau_h;
             p.alpha = alpha;
             if (current) p.current = vec_in(*current, "current");
             return Network(mat_in(xi, "xi"), feature, hidden, p);
           }),
           py::arg("xi"), py::arg("feature"), py::arg("hidden"), py::arg("tau_f") = 1.0, py::arg("tau_h") = 1.0,
           py::arg("current") = py::none(), py::arg("alpha") = 1.0)
      .def_property_readonly("n_features", &Network::n_features, "N_f, the number of feature neurons.")
      .def_property_readonly("n_hidden", &Network::n_hidden, "N_h, the number of hidden (memory) neurons.")
      .def("energy", [](const Network& n, const F64& v, const F64& h) { return n.energy(vec_in(v, "v"), vec_in(h, "h")); },
           py::arg("v"), py::arg("h"), "The energy, eq. (2).")
      .def("energy_rate", [](const Network& n, const F64& v, const F64& h) { return n.energy_rate(vec_in(v, "v"), vec_in(h, "h")); },
           py::arg("v"), py::arg("h"), "dE/dt from eq. (4) (<= 0 where the Hessians are PSD).")
      .def("energy_bound",
           [](const Network& n) {
             const Network::EnergyBound b = n.energy_bound();
             const char* v = b.verdict == Network::EnergyBound::Verdict::Bounded     ? "bounded"
                             : b.verdict == Network::EnergyBound::Verdict::Unbounded ? "unbounded"
                                                                                     : "unknown";
             return py::make_tuple(v, b.lower, b.why);
           },
           "Whether eq. (2) is bounded below (Section 2): (verdict 'bounded' | 'unbounded' | 'unknown', a lower "
           "bound when bounded, the reason).")
      .def("effective_energy", [](const Network& n, const F64& v) { return n.effective_energy(vec_in(v, "v")); },
           py::arg("v"), "eq. (2) at the hidden steady state h = xi g(v): eqs. (8), (13), (21).")
      .def("rhs",
           [](const Network& n, const F64& v, const F64& h) {
             Vector dv, dh;
             n.rhs(vec_in(v, "v"), vec_in(h, "h"), dv, dh);
             return py::make_tuple(vec_out(dv), vec_out(dh));
           },
           py::arg("v"), py::arg("h"), "(dv/dt, dh/dt) of eq. (1).")
      .def("simulate",
           [](const Network& n, const F64& v0, std::optional<F64> h0, double t_end, const std::string& method, double rtol,
              double atol, double dt, long max_steps, double fixed_point_tol, long record_every) {
             SimulateOptions o = simulate_options(t_end, method, rtol, atol, dt, max_steps, fixed_point_tol, record_every);
             const Vector v = vec_in(v0, "v0"), h = h0 ? vec_in(*h0, "h0") : Vector();
             Trajectory tr = simulate_interruptibly(o, [&](const SimulateOptions& oo) { return simulate(n, v, h, oo); });
             PyTrajectory out;
             out.t = to_numpy(std::vector<double>(tr.t), {static_cast<py::ssize_t>(tr.t.size())});
             out.energy = to_numpy(std::vector<double>(tr.energy), {static_cast<py::ssize_t>(tr.energy.size())});
             out.energy_rate = to_numpy(std::vector<double>(tr.energy_rate), {static_cast<py::ssize_t>(tr.energy_rate.size())});
             out.v = rows_out(tr.v);
             out.h = rows_out(tr.h);
             out.steps = tr.result.steps;
             out.non_psd_steps = tr.non_psd_steps;
             out.first_non_psd_t = tr.first_non_psd_t;
             out.reason = to_string(tr.result.reason);
             return out;
           },
           py::arg("v0"), py::arg("h0") = py::none(), py::arg("t_end") = 10.0, py::arg("method") = "rk45",
           py::arg("rtol") = 1e-6, py::arg("atol") = 1e-9, py::arg("dt") = 0.0, py::arg("max_steps") = 100000,
           py::arg("fixed_point_tol") = 0.0, py::arg("record_every") = 1,
           "Integrates eq. (1) from (v0, h0) (h0=None: the steady state xi g(v0)). method: 'euler', 'rk4' "
           "(both need dt), 'rk45' (Dormand-Prince), 'bdf' (CVODE, for tau_h << tau_f). Stops at t_end, or at a "
           "fixed point when max |dy/dt| <= fixed_point_tol. Returns a Trajectory.");
}

// Hierarchical associative memories: layers, synapses, the network and its trajectories.
struct PyLayeredTrajectory {
  py::array_t<double> t, x, energy, energy_rate;
  long steps, non_psd_steps;
  double first_non_psd_t;
  std::string reason;
};

PyLayeredTrajectory layered_out(const LayeredTrajectory& tr);

// One array per synapse, shaped as its parameters: (target, source) for dense, (out_channels,
// in_channels, kh, kw) for conv2d (Matrix is row-major, so its data is already in that order).
py::list synapse_arrays(const LayeredNetwork& n, const std::vector<Matrix>& gw) {
  py::list out;
  for (std::size_t s = 0; s < gw.size(); ++s) {
    const Matrix& m = gw[s];
    std::vector<double> flat(m.data(), m.data() + m.size());
    std::vector<py::ssize_t> shape{static_cast<py::ssize_t>(m.rows()), static_cast<py::ssize_t>(m.cols())};
    if (auto c = std::dynamic_pointer_cast<const Conv2dSynapse>(n.synapse(s).op))
      shape = {static_cast<py::ssize_t>(m.rows()), static_cast<py::ssize_t>(c->in_shape().channels),
               static_cast<py::ssize_t>(c->kernel_height()), static_cast<py::ssize_t>(c->kernel_width())};
    out.append(to_numpy(std::move(flat), shape));
  }
  return out;
}

py::array_t<double> mat_out(const Matrix& m) {
  return to_numpy(std::vector<double>(m.data(), m.data() + m.size()), {m.rows(), m.cols()});
}

py::tuple gradients_out(const LayeredNetwork& n, const LayeredGradients& g) {
  return py::make_tuple(mat_out(g.states), synapse_arrays(n, g.weights), vec_out(g.currents));
}

// A stack of batches (T, B, N) as T matrices B x N.
std::vector<Matrix> stack_in(const F64& a, const char* name) {
  if (a.ndim() != 3) throw InvalidArgument(detail::concat(name, " must be 3-D (steps, batch, neurons), got ", a.ndim(), " dimensions"));
  std::vector<Matrix> out;
  const auto B = a.shape(1), N = a.shape(2);
  for (py::ssize_t t = 0; t < a.shape(0); ++t) out.push_back(Eigen::Map<const Matrix>(a.data() + t * B * N, B, N));
  return out;
}

// f() with the GIL released (the library's own threads do the work; inputs are copied first).
template <class F>
auto without_gil(F&& f) {
  py::gil_scoped_release nogil;
  return f();
}

// The batched training functions of assocmem/layered.hpp for assocmem.torch (private: _core._layered_*).
// Batches are (B, N) arrays, float64; the GIL is released while they run.
void bind_layered_training(py::module_& m) {
  m.def("_layered_energies", [](const LayeredNetwork& n, const F64& X, int threads) {
    const Matrix x = mat_in(X, "states");
    return vec_out(without_gil([&] { return layered_energies(n, x, threads); }));
  });
  m.def("_layered_energies_vjp", [](const LayeredNetwork& n, const F64& X, const F64& c, int threads) {
    const Matrix x = mat_in(X, "states");
    const Vector cv = vec_in(c, "c");
    return gradients_out(n, without_gil([&] { return layered_energies_vjp(n, x, cv, threads); }));
  });
  m.def("_layered_activations", [](const LayeredNetwork& n, const F64& X, int threads) {
    const Matrix x = mat_in(X, "states");
    return mat_out(without_gil([&] { return layered_activations(n, x, threads); }));
  });
  m.def("_layered_activations_vjp", [](const LayeredNetwork& n, const F64& X, const F64& U, int threads) {
    const Matrix x = mat_in(X, "states"), u = mat_in(U, "activation gradient");
    return mat_out(without_gil([&] { return layered_activations_vjp(n, x, u, threads); }));
  });
  m.def("_layered_euler", [](const LayeredNetwork& n, const F64& X0, double dt, int steps, bool keep_all, int threads) {
    const Matrix x0 = mat_in(X0, "initial states");
    const std::vector<Matrix> states = without_gil([&] { return layered_euler(n, x0, dt, steps, keep_all, threads); });
    std::vector<double> flat;
    flat.reserve(states.size() * static_cast<std::size_t>(x0.size()));
    for (const Matrix& s : states) flat.insert(flat.end(), s.data(), s.data() + s.size());
    return to_numpy(std::move(flat), {static_cast<py::ssize_t>(states.size()), x0.rows(), x0.cols()});
  });
  m.def("_layered_euler_vjp", [](const LayeredNetwork& n, const F64& states, double dt, const F64& grad_last, int threads) {
    const std::vector<Matrix> st = stack_in(states, "states");
    const Matrix g = mat_in(grad_last, "gradient of the last state");
    return gradients_out(n, without_gil([&] { return layered_euler_vjp(n, st, dt, g, threads); }));
  });
  m.def("_layered_fixed_point_vjp", [](const LayeredNetwork& n, const F64& X, const F64& grad, double dt, double tol,
                                       int max_iterations, int threads) {
    const Matrix x = mat_in(X, "fixed points"), g = mat_in(grad, "gradient at the fixed points");
    return gradients_out(n, without_gil([&] { return layered_fixed_point_vjp(n, x, g, dt, tol, max_iterations, threads); }));
  });
}

void bind_layered(py::module_& m) {
  py::class_<LayerSpec>(m, "Layer", "One layer of a LayeredNetwork: name, number of neurons, Lagrangian (its "
                                    "gradient is the activation, eq. 3), time constant tau, input current.")
      .def(py::init([](std::string name, Eigen::Index size, std::shared_ptr<Lagrangian> lagrangian, double tau,
                       std::optional<F64> current) {
             return LayerSpec{std::move(name), size, lagrangian, tau, current ? vec_in(*current, "current") : Vector()};
           }),
           py::arg("name"), py::arg("size"), py::arg("lagrangian"), py::arg("tau") = 1.0, py::arg("current") = py::none())
      .def_readonly("name", &LayerSpec::name)
      .def_readonly("size", &LayerSpec::size)
      .def_readonly("tau", &LayerSpec::tau)
      .def("__repr__", [](const LayerSpec& l) {
        return "<Layer '" + l.name + "': " + std::to_string(l.size) + " neurons, " +
               (l.lagrangian ? l.lagrangian->name() : std::string("no Lagrangian")) + ">";
      });
  py::class_<SynapseSpec>(m, "Synapse", "A synapse from one layer to another (assocmem.dense, assocmem.conv2d): W "
                                        "maps the activation of `source` to currents of `target`; the feedback is W^T.")
      .def_readonly("source", &SynapseSpec::from)
      .def_readonly("target", &SynapseSpec::to)
      .def_property_readonly("kind", [](const SynapseSpec& s) { return s.op->describe(); })
      .def("__repr__", [](const SynapseSpec& s) { return "<Synapse '" + s.from + "' -> '" + s.to + "': " + s.op->describe() + ">"; });
  m.def("dense",
        [](std::string source, std::string target, const F64& W) {
          return SynapseSpec{std::move(source), std::move(target), std::make_shared<DenseSynapse>(mat_in(W, "W"))};
        },
        py::arg("source"), py::arg("target"), py::arg("W"),
        "A dense synapse: W has shape (size of target, size of source).");
  m.def("conv2d",
        [](std::string source, std::string target, const F64& kernel, std::array<Eigen::Index, 3> in_shape,
           Eigen::Index stride, Eigen::Index padding) {
          if (kernel.ndim() != 4)
            throw InvalidArgument(detail::concat("kernel must be a 4-D array (out_channels, in_channels, kh, kw), got ",
                                                 kernel.ndim(), " dimensions"));
          const auto o = kernel.shape(0), c = kernel.shape(1), kh = kernel.shape(2), kw = kernel.shape(3);
          if (c != in_shape[0])
            throw InvalidArgument(detail::concat("kernel has ", c, " input channels but in_shape has ", in_shape[0]));
          Matrix K(o, c * kh * kw);
          const double* k = kernel.data();
          for (py::ssize_t i = 0; i < o; ++i)
            for (py::ssize_t j = 0; j < c * kh * kw; ++j) K(i, j) = k[i * c * kh * kw + j];
          return SynapseSpec{std::move(source), std::move(target),
                             std::make_shared<Conv2dSynapse>(ImageShape{in_shape[0], in_shape[1], in_shape[2]}, std::move(K),
                                                             kh, kw, stride, padding)};
        },
        py::arg("source"), py::arg("target"), py::arg("kernel"), py::arg("in_shape"), py::arg("stride") = 1,
        py::arg("padding") = 0,
        "A 2-D convolutional synapse, as torch.nn.functional.conv2d without bias: kernel (out_channels, "
        "in_channels, kh, kw), the source layer read as in_shape = (channels, height, width); the target has "
        "out_channels x ((H + 2 padding - kh) // stride + 1) x ((W + 2 padding - kw) // stride + 1) neurons. The "
        "feedback is the transposed convolution.");

  py::class_<PyLayeredTrajectory>(m, "LayeredTrajectory",
                                  "A recorded run of a LayeredNetwork: t (T,), x (T, N) the stacked states "
                                  "(LayeredNetwork.split splits them), energy and energy_rate (T,).")
      .def_readonly("t", &PyLayeredTrajectory::t)
      .def_readonly("x", &PyLayeredTrajectory::x)
      .def_readonly("energy", &PyLayeredTrajectory::energy)
      .def_readonly("energy_rate", &PyLayeredTrajectory::energy_rate)
      .def_readonly("steps", &PyLayeredTrajectory::steps)
      .def_readonly("non_psd_steps", &PyLayeredTrajectory::non_psd_steps)
      .def_readonly("first_non_psd_t", &PyLayeredTrajectory::first_non_psd_t)
      .def_readonly("reason", &PyLayeredTrajectory::reason)
      .def("__repr__", [](const PyLayeredTrajectory& t) {
        return "<LayeredTrajectory: " + std::to_string(t.t.size()) + " records, " + std::to_string(t.steps) +
               " steps, " + t.reason + ">";
      });

  py::class_<LayeredNetwork>(m, "LayeredNetwork",
                             "A hierarchical associative memory (Krotov 2021): layers coupled by symmetric "
                             "synapses, one energy that never increases for convex Lagrangians. The state is one "
                             "vector, the layers' currents stacked in the order given.")
      .def(py::init([](std::vector<LayerSpec> layers, std::vector<SynapseSpec> synapses) {
             return LayeredNetwork(std::move(layers), std::move(synapses));
           }),
           py::arg("layers"), py::arg("synapses"))
      .def_static("from_network", &LayeredNetwork::from_network, py::arg("network"),
                  "The two-layer network of eq. (1) as layers 'v' and 'h' with one dense synapse xi (alpha = 1).")
      .def_property_readonly("size", &LayeredNetwork::size, "Neurons in all layers (the length of a state).")
      .def_property_readonly("layers", [](const LayeredNetwork& n) {
        std::vector<LayerSpec> out;
        for (std::size_t A = 0; A < n.n_layers(); ++A) out.push_back(n.layer(A));
        return out;
      })
      .def_property_readonly("synapses", [](const LayeredNetwork& n) {
        std::vector<SynapseSpec> out;
        for (std::size_t s = 0; s < n.n_synapses(); ++s) out.push_back(n.synapse(s));
        return out;
      })
      .def("split",
           [](const LayeredNetwork& n, const F64& x) {
             // x: (N,) or (T, N); a dict of each layer's part, (size,) or (T, size).
             const bool rows = x.ndim() == 2;
             if ((x.ndim() != 1 && !rows) || x.shape(x.ndim() - 1) != n.size())
               throw InvalidArgument(detail::concat("x must have shape (", n.size(), ",) or (T, ", n.size(), ")"));
             py::dict out;
             const py::ssize_t T = rows ? x.shape(0) : 1;
             for (std::size_t A = 0; A < n.n_layers(); ++A) {
               const auto sz = static_cast<py::ssize_t>(n.layer(A).size), off = static_cast<py::ssize_t>(n.offset(A));
               std::vector<double> part(static_cast<std::size_t>(T * sz));
               for (py::ssize_t t = 0; t < T; ++t)
                 std::copy(x.data() + t * n.size() + off, x.data() + t * n.size() + off + sz, &part[static_cast<std::size_t>(t * sz)]);
               out[py::str(n.layer(A).name)] =
                   rows ? to_numpy(std::move(part), {T, sz}) : to_numpy(std::move(part), {sz});
             }
             return out;
           },
           py::arg("x"), "Each layer's part of a state (N,) or of states (T, N), by layer name.")
      .def("energy_bound",
           [](const LayeredNetwork& n) {
             const Network::EnergyBound b = n.energy_bound();
             return py::make_tuple(b.verdict == Network::EnergyBound::Verdict::Bounded ? "bounded" : "unknown", b.lower,
                                   b.why);
           },
           "Whether the energy is bounded below (Section 2 for L layers): (verdict 'bounded' | 'unknown', a lower "
           "bound when bounded, the reason).")
      .def("energy_gradient",
           [](const LayeredNetwork& n, const F64& x) {
             Vector g;
             n.energy_gradient(vec_in(x, "x"), g);
             return vec_out(g);
           },
           py::arg("x"), "dE/dx: layer by layer M^A (x^A - sum W g - I_A) = -tau_A M^A dx^A/dt.")
      .def("energy_weight_gradients",
           [](const LayeredNetwork& n, const F64& x) { return synapse_arrays(n, n.energy_weight_gradients(vec_in(x, "x"))); },
           py::arg("x"),
           "dE/dW for every synapse, in synapse order, shaped as its parameters: (target, source) for dense, "
           "(out_channels, in_channels, kh, kw) for conv2d.")
      .def("vjp",
           [](const LayeredNetwork& n, const F64& x, const F64& u) {
             Vector out;
             n.vjp(vec_in(x, "x"), vec_in(u, "u"), out);
             return vec_out(out);
           },
           py::arg("x"), py::arg("u"), "u^T J: the vector-Jacobian product of dx/dt at x (for reverse-mode gradients).")
      .def("activations", [](const LayeredNetwork& n, const F64& x) { return vec_out(n.activations(vec_in(x, "x"))); },
           py::arg("x"), "Every layer's activation g^A = dL^A/dx^A (eq. 3), stacked as the state.")
      .def("energy", [](const LayeredNetwork& n, const F64& x) { return n.energy(vec_in(x, "x")); }, py::arg("x"),
           "E = sum_A [x^A.g^A - L^A] - sum_s g^target.W_s g^source - sum_A I_A.g^A (eq. 2 for L layers).")
      .def("energy_rate", [](const LayeredNetwork& n, const F64& x) { return n.energy_rate(vec_in(x, "x")); },
           py::arg("x"), "dE/dt = -sum_A tau_A x'^A.M^A x'^A (eq. 4 for L layers; <= 0 where every Hessian is PSD).")
      .def("rhs",
           [](const LayeredNetwork& n, const F64& x) {
             Vector dx;
             n.rhs(vec_in(x, "x"), dx);
             return vec_out(dx);
           },
           py::arg("x"), "dx/dt: tau_A dx^A/dt = sum W g^below + sum W^T g^above - x^A + I_A (eq. 1 for L layers).")
      .def("simulate",
           [](const LayeredNetwork& n, const F64& x0, double t_end, const std::string& method, double rtol, double atol,
              double dt, long max_steps, double fixed_point_tol, long record_every) {
             SimulateOptions o = simulate_options(t_end, method, rtol, atol, dt, max_steps, fixed_point_tol, record_every);
             const Vector x = vec_in(x0, "x0");
             return layered_out(simulate_interruptibly(o, [&](const SimulateOptions& oo) { return simulate(n, x, oo); }));
           },
           py::arg("x0"), py::arg("t_end") = 10.0, py::arg("method") = "rk45", py::arg("rtol") = 1e-6,
           py::arg("atol") = 1e-9, py::arg("dt") = 0.0, py::arg("max_steps") = 100000, py::arg("fixed_point_tol") = 0.0,
           py::arg("record_every") = 1,
           "Integrates the layered network from x0, with the options of Network.simulate. Returns a "
           "LayeredTrajectory.");
}

// The records of a layered simulation as numpy arrays.
PyLayeredTrajectory layered_out(const LayeredTrajectory& tr) {
  PyLayeredTrajectory out;
  out.t = to_numpy(std::vector<double>(tr.t), {static_cast<py::ssize_t>(tr.t.size())});
  out.energy = to_numpy(std::vector<double>(tr.energy), {static_cast<py::ssize_t>(tr.energy.size())});
  out.energy_rate = to_numpy(std::vector<double>(tr.energy_rate), {static_cast<py::ssize_t>(tr.energy_rate.size())});
  out.x = rows_out(tr.x);
  out.steps = tr.result.steps;
  out.non_psd_steps = tr.non_psd_steps;
  out.first_non_psd_t = tr.first_non_psd_t;
  out.reason = to_string(tr.result.reason);
  return out;
}

void bind_adiabatic(py::module_& m) {
  py::class_<AdiabaticLayeredSystem>(m, "AdiabaticLimit",
                                     "The limit tau -> 0 of some layers of a LayeredNetwork: they sit at their steady "
                                     "state x^A = sum W g + I_A given the others (no synapse may join two of them). "
                                     "Its state y holds the slow layers' currents; the effective energy is E(full(y)).")
      .def(py::init<const LayeredNetwork&, const std::vector<std::string>&>(), py::arg("network"), py::arg("fast"),
           py::keep_alive<1, 2>())
      .def_property_readonly("size", &AdiabaticLayeredSystem::size, "Neurons in the slow layers.")
      .def("full", [](const AdiabaticLayeredSystem& s, const F64& y) { return vec_out(s.full(vec_in(y, "y"))); },
           py::arg("y"), "The full state: y's slow layers, the fast ones at their steady state.")
      .def("slow", [](const AdiabaticLayeredSystem& s, const F64& x) { return vec_out(s.slow(vec_in(x, "x"))); },
           py::arg("x"), "The slow layers' part of a full state.")
      .def("energy", [](const AdiabaticLayeredSystem& s, const F64& y) { return s.energy(vec_in(y, "y")); },
           py::arg("y"), "The effective energy E(full(y)).")
      .def("energy_rate", [](const AdiabaticLayeredSystem& s, const F64& y) { return s.energy_rate(vec_in(y, "y")); },
           py::arg("y"), "Its rate along the effective dynamics (eq. 4 over the slow layers).")
      .def("rhs",
           [](const AdiabaticLayeredSystem& s, const F64& y) {
             Vector dy;
             s.rhs(0.0, vec_in(y, "y"), dy);
             return vec_out(dy);
           },
           py::arg("y"), "dy/dt of the effective dynamics.")
      .def("simulate",
           [](const AdiabaticLayeredSystem& s, const F64& y0, double t_end, const std::string& method, double rtol,
              double atol, double dt, long max_steps, double fixed_point_tol, long record_every) {
             SimulateOptions o = simulate_options(t_end, method, rtol, atol, dt, max_steps, fixed_point_tol, record_every);
             const Vector y = vec_in(y0, "y0");
             return layered_out(simulate_interruptibly(o, [&](const SimulateOptions& oo) { return simulate(s, y, oo); }));
           },
           py::arg("y0"), py::arg("t_end") = 10.0, py::arg("method") = "rk45", py::arg("rtol") = 1e-6,
           py::arg("atol") = 1e-9, py::arg("dt") = 0.0, py::arg("max_steps") = 100000, py::arg("fixed_point_tol") = 0.0,
           py::arg("record_every") = 1,
           "Integrates the effective dynamics from the slow layers' state y0; the records hold full states and the "
           "effective energy.");
}

// Models A, B, C over the engines, and the table of defaults.
void bind_models(py::module_& m) {
  // Models: thin classes over the engines; the Python layer (assocmem/__init__.py) gives them
  // their public signatures, shapes and dtypes. Defaults come from retrieve_defaults.
  m.def("retrieve_defaults",
        [](const std::string& model) {
          const ModelKind k = parse_model(model);
          const RetrieveDefaults d = retrieve_defaults(k);
          py::dict out;
          out["max_steps"] = d.max_steps;
          out["tol"] = d.tol;
          out["step"] = d.step;
          if (k == ModelKind::A) out["order"] = to_string(d.order);
          if (k != ModelKind::B) {
            const InteractionSpec F = default_interaction(k);
            out["F"] = to_string(F.kind);
            out["n"] = F.n;
          }
          return out;
        },
        py::arg("model"), "The library's defaults for model 'A', 'B' or 'C' (the same table C++ and the CLI read).");

  py::class_<PyModelA>(m, "_ModelA")
      .def(py::init<py::object, const std::string&, double, double, std::optional<F64>, int>(), py::arg("store"),
           py::arg("F"), py::arg("n"), py::arg("beta"), py::arg("current"), py::arg("threads"))
      .def("retrieve", &PyModelA::retrieve, py::arg("cues"), py::arg("steps"), py::arg("tol"), py::arg("order"),
           py::arg("seed"), py::arg("energy"), py::arg("clamp"), py::arg("progress"))
      .def("energy", &PyModelA::energy, py::arg("states"))
      .def_property_readonly("n_features", [](const PyModelA& a) { return a.engine().n_features(); })
      .def_property_readonly("n_memories", [](const PyModelA& a) { return a.engine().n_memories(); })
      .def_property_readonly("kernel", [](const PyModelA& a) { return a.engine().kernel(); })
      .def_property_readonly("store", &PyModelA::store);

  py::class_<PyModelB>(m, "_ModelB")
      .def(py::init<py::object, std::optional<py::object>, double, int, const std::string&>(), py::arg("keys"),
           py::arg("values"), py::arg("beta"), py::arg("threads"), py::arg("kernel"))
      .def("retrieve", &PyModelB::retrieve, py::arg("queries"), py::arg("steps"), py::arg("tol"), py::arg("step"),
           py::arg("top_k"), py::arg("energy"), py::arg("beta"), py::arg("mask"), py::arg("clamp"), py::arg("progress"),
           py::arg("certify") = std::nullopt, py::arg("approximate") = std::nullopt)
      .def_property_readonly("codes_source", &PyModelB::codes_source)
      .def("index_candidates", [](const PyModelB& m, const std::string& kind, std::size_t lists, std::size_t probes,
                                  std::size_t links, std::size_t ef_search, std::uint64_t seed) {
             return m.index_candidates({kind, lists, probes, links, ef_search, seed});
           }, py::arg("kind"), py::arg("lists"), py::arg("probes"), py::arg("links"), py::arg("ef_search"), py::arg("seed"))
      .def_property_readonly("candidates_index", &PyModelB::candidates_index)
      .def_property_readonly_static("has_ann", [](py::object) {
#ifdef ASSOCMEM_WITH_ANN
        return true;
#else
        return false;
#endif
      })
      .def("attention", &PyModelB::attention, py::arg("queries"), py::arg("top_k"), py::arg("beta"), py::arg("mask"))
      .def("energy", &PyModelB::energy, py::arg("states"), py::arg("beta"), py::arg("mask"))
      .def_property_readonly("n_features", [](const PyModelB& b) { return b.engine().dim(); })
      .def_property_readonly("value_dim", [](const PyModelB& b) { return b.engine().value_dim(); })
      .def_property_readonly("n_memories", [](const PyModelB& b) { return b.engine().size(); })
      .def_property_readonly("beta", [](const PyModelB& b) { return b.engine().beta(); })
      .def_property_readonly("kernel", [](const PyModelB& b) { return b.engine().kernel(); })
      .def_property_readonly("store", &PyModelB::keys)
      .def_property_readonly("values_store", &PyModelB::values);

  py::class_<PyModelC>(m, "_ModelC")
      .def(py::init<py::object, const std::string&, double, double, double, int, const std::string&>(), py::arg("store"),
           py::arg("F"), py::arg("n"), py::arg("beta"), py::arg("alpha"), py::arg("threads"), py::arg("kernel"))
      .def("retrieve", &PyModelC::retrieve, py::arg("queries"), py::arg("steps"), py::arg("tol"), py::arg("step"),
           py::arg("energy"), py::arg("mask"), py::arg("clamp"), py::arg("progress"), py::arg("certify") = std::nullopt)
      .def_property_readonly("codes_source", &PyModelC::codes_source)
      .def("energy", &PyModelC::energy, py::arg("states"), py::arg("mask"))
      .def_property_readonly("n_features", [](const PyModelC& c) { return c.engine().dim(); })
      .def_property_readonly("n_memories", [](const PyModelC& c) { return c.engine().size(); })
      .def_property_readonly("kernel", [](const PyModelC& c) { return c.engine().kernel(); })
      .def_property_readonly("store", &PyModelC::store);
}

// MemoryStore.
void bind_store(py::module_& m) {
  // Memory store ------------------------------------------------------------------------------
  py::class_<MemoryStore>(m, "MemoryStore",
                          "K memories of dimension d (float32, bfloat16 or packed bits) with ids; saved atomically "
                          "in a checksummed file; opened into memory or by memory mapping.")
      .def(py::init<std::size_t, DType>(), py::arg("dim"), py::arg("dtype"))
      .def(py::init([](std::size_t dim, const std::string& dtype) { return MemoryStore(dim, parse_dtype(dtype)); }),
           py::arg("dim"), py::arg("dtype") = "float32", "An empty store; dtype 'float32', 'bfloat16' or 'bits'.")
      .def_static("open", [](const std::string& path, bool verify, const std::string& access) {
                    OpenOptions o;
                    o.verify_checksum = verify;
                    o.access = parse_access(access);
                    py::gil_scoped_release release;
                    return MemoryStore::open(path, o);
                  },
                  py::arg("path"), py::arg("verify_checksum") = true, py::arg("access") = "auto",
                  "Opens a saved store. access: 'copy' reads it into memory (later changes to the file cannot "
                  "affect it), 'map' maps it read-only (stores larger than RAM; if the file shrinks meanwhile, "
                  "reads raise OSError), 'auto' copies stores up to a quarter of the RAM. Raises OSError naming "
                  "the file and the problem.")
      .def_static("append_to_file",
                  [](const std::string& path, const py::array& given, std::optional<std::string> dtype) {
                    const F32 rows = real_f32(given, "patterns");
                    const auto last = rows.ndim() >= 1 ? static_cast<std::size_t>(rows.shape(rows.ndim() - 1)) : 0;
                    const Batch b = batch_in(rows, last, "patterns");
                    py::gil_scoped_release release;
                    return MemoryStore::append_to_file(path, b.arr.data(), b.rows, b.cols,
                                                       dtype ? parse_dtype(*dtype) : DType::Float32, dtype.has_value());
                  },
                  py::arg("path"), py::arg("patterns"), py::arg("dtype") = py::none(),
                  "Appends patterns ((d,) or (n, d)) to the store file at path, creating it when absent (dtype "
                  "default 'float32'; if given, it must match an existing store's). Holds the folder lock from "
                  "the read to the rename, so concurrent appenders never lose an append. Returns the new count.")
      .def("append",
           [](MemoryStore& s, const py::array& rows, std::optional<py::array> ids) {
             const Batch b = batch_in(real_f32(rows, "patterns"), s.dim(), "patterns");
             const std::vector<std::uint64_t> id = ids ? ids_in(*ids) : std::vector<std::uint64_t>();
             if (ids && id.size() != b.rows)
               throw InvalidArgument("ids has " + std::to_string(id.size()) + " entries for " + std::to_string(b.rows) + " patterns");
             s.append(b.arr.data(), b.rows, ids ? id.data() : nullptr);
           },
           py::arg("patterns"), py::arg("ids") = py::none(), "Appends patterns ((d,) or (n, d)); ids default to size(), size()+1, ...")
      .def("append_npy", &MemoryStore::append_npy, py::arg("path"))
      .def("export_npy", &MemoryStore::export_npy, py::arg("path"))
      .def("save", &MemoryStore::save, py::arg("path"), "Writes the store atomically (temp file, fsync, rename).")
      .def("to_array",
           [](const MemoryStore& s) {
             std::vector<float> out(s.size() * s.dim());
             for (std::size_t i = 0; i < s.size(); ++i) s.decode_row(i, &out[i * s.dim()]);
             s.check_intact();  // a mapped file that shrank meanwhile: OSError, not garbage
             return to_numpy(std::move(out), {static_cast<py::ssize_t>(s.size()), static_cast<py::ssize_t>(s.dim())});
           },
           "The memories as a (K, d) float32 array (bits decode to +-1).")
      .def_property_readonly("ids", [](const MemoryStore& s) {
        return to_numpy(std::vector<std::uint64_t>(s.ids(), s.ids() + s.size()), {static_cast<py::ssize_t>(s.size())});
      }, "The 64-bit id of each memory, shape (K,).")
      .def_property_readonly("dim", &MemoryStore::dim, "d, the dimension of the memories.")
      .def_property_readonly("dtype", [](const MemoryStore& s) { return to_string(s.dtype()); },
                             "Element type: 'float32', 'bfloat16' or 'bits'.")
      .def_property_readonly("mapped", &MemoryStore::mapped, "True when the memories are read from a mapped file.")
      .def("close",
           [](MemoryStore& s) {
             if (s.users())
               throw InvalidArgument("close: the store is in use by a model; delete the model first");
             s = MemoryStore(s.dim(), s.dtype());
           },
           "Releases the memories (and the mapping of an opened file); the store is then empty. Refused "
           "while a model uses the store.")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](MemoryStore& s, py::args) {
             if (!s.users()) s = MemoryStore(s.dim(), s.dtype());
             return false;
           },
           "Leaving a `with` block closes the store, unless a model still uses it (it then lives on with the model).")
      .def("__len__", &MemoryStore::size)
      .def("__repr__", [](const MemoryStore& s) {
        return "<MemoryStore: " + std::to_string(s.size()) + " x " + std::to_string(s.dim()) + " " + to_string(s.dtype()) +
               (s.mapped() ? ", mapped" : "") + ">";
      });
  py::enum_<DType>(m, "DType").value("float32", DType::Float32).value("bfloat16", DType::BFloat16).value("bits", DType::Bits);
}

// Capacity measurements.
void bind_capacity(py::module_& m) {
  // Capacity ------------------------------------------------------------------------------------
  // Keyword arguments name CapacitySpec's fields (the library's set_capacity_field, which the command
  // line uses too); fields not given keep the struct's defaults.
  auto spec_from = [](const py::kwargs& kw) {
    CapacitySpec s;
    for (const auto& [key, value] : kw) {
      const std::string name = py::str(key);
      const std::string text = py::isinstance<py::bool_>(value) ? (value.cast<bool>() ? "true" : "false")
                                                                 : std::string(py::str(value));
      set_capacity_field(s, name, text);
    }
    s.validate();
    return s;
  };
  auto point_dict = [](const CapacityPoint& p) {
    py::dict d;
    d["K"] = p.spec.K;
    d["N"] = p.spec.N;
    d["cues"] = p.cues;
    d["recalled"] = p.recalled;
    d["recalled_stderr"] = p.recalled_stderr;
    d["trial_recalled"] = p.trial_recalled;
    d["bit_error"] = p.bit_error;
    d["seconds"] = p.seconds;
    return d;
  };
  m.def("measure_capacity",
        [=](const py::kwargs& kw) {
          const CapacitySpec s = spec_from(kw);
          CapacityPoint p;
          {
            py::gil_scoped_release nogil;
            p = measure_capacity(s);
          }
          return point_dict(p);
        },
        "Measures recall over random +-1 memories (see assocmem.capacity). Keyword arguments: model, F, n, beta, "
        "N, K, hidden, protocol, rho, one_step, order, max_steps, step, trials, cues, count_negatives, seed, "
        "threads, criterion (defaults: assocmem::CapacitySpec). Returns a dict: K, N, cues, recalled (fraction "
        "with no wrong bit, or ending on a memory for protocol='random'), recalled_stderr (over trials; nan for "
        "one trial), trial_recalled (each trial's fraction), bit_error, seconds.");
  m.def("bisect_capacity",
        [=](double threshold, std::size_t K_lo, std::size_t K_hi, bool interval, const py::kwargs& kw) {
          CapacitySpec s = spec_from(kw);
          s.K = K_lo;
          s.validate();
          Bisection b;
          {
            py::gil_scoped_release nogil;
            b = bisect_capacity(s, threshold, K_lo, K_hi, {}, interval);
          }
          py::list pts;
          for (const auto& p : b.points) pts.append(point_dict(p));
          return py::make_tuple(b.K, pts, py::make_tuple(b.K_low, b.K_high));
        },
        py::arg("threshold"), py::arg("K_lo"), py::arg("K_hi"), py::arg("interval") = true,
        "The largest K in [K_lo, K_hi] whose recalled fraction is >= threshold (bisection); keyword arguments "
        "as measure_capacity. Returns (K, points, (K_low, K_high)): the measured K range that trial-level "
        "errors (2 standard errors) cannot separate from the threshold.");
  m.def("fit_loglog_slope",
        [](const std::vector<double>& N, const std::vector<std::pair<double, double>>& K_ranges) {
          const SlopeFit f = fit_loglog_slope(N, K_ranges);
          return py::make_tuple(f.slope, f.stderr_);
        },
        py::arg("N"), py::arg("K_ranges"),
        "d ln K / d ln N fitted to capacity ranges (K_low, K_high) at sizes N (assocmem::fit_loglog_slope): "
        "returns (slope, standard error).");
}

// Glyph images and file writing.
void bind_glyphs(py::module_& m) {
  // Glyphs --------------------------------------------------------------------------------------
  m.def("render_glyphs",
        [](const std::string& font, std::size_t count, std::size_t size, std::uint32_t first) {
          GlyphSet g;
          {
            py::gil_scoped_release nogil;
            g = render_glyphs(font.empty() ? default_cjk_font() : font, count, size, first);
          }
          const auto n = static_cast<py::ssize_t>(g.count()), sz = static_cast<py::ssize_t>(size);
          return py::make_tuple(to_numpy(std::move(g.codepoints), {n}), to_numpy(std::move(g.pixels), {n, sz, sz}));
        },
        py::arg("font") = "", py::arg("count") = 3000, py::arg("size") = 64, py::arg("first") = 0x4E00,
        "Renders the first `count` characters from `first` (U+4E00: CJK ideographs) that the font has, as "
        "(codepoints, images) with images of shape (count, size, size), +1 ink / -1 background. font='' uses "
        "Debian's IPA Gothic (fonts-ipafont-gothic).");
  m.def("write_file",
        [](const std::string& path, const py::bytes& data) {
          const std::string bytes = data;
          py::gil_scoped_release release;
          write_file_atomically(path, {{bytes.data(), bytes.size()}});
        },
        py::arg("path"), py::arg("data"),
        "Writes bytes to path the way every assocmem output is written (docs/reliability.md): atomically "
        "under the folder lock, through symbolic links, never over a device or FIFO, keeping the mode of a "
        "replaced file. Raises OSError naming the path.");
  m.def("default_cjk_font", &default_cjk_font, "Path of Debian's IPA Gothic font, or '' when it is not installed.");
  m.def("available_kernels", &available_kernels,
        "Names of the kernel tables this CPU and build run, best first (e.g. ['avx512', 'avx2', 'sse4', "
        "'generic']): any of them is a valid kernel= argument of the models; the environment variable "
        "ASSOCMEM_KERNEL forces the automatic choice.");
  m.def("_empty_cache", [] { return LargeBuffers::release(); },
        "Frees the large output buffers kept for reuse (assocmem.torch.empty_cache); returns the bytes freed.");
  m.def("_cached_bytes", [] { return LargeBuffers::kept_bytes(); }, "Bytes of large output buffers kept for reuse.");
  m.def("_worker_pools", [] {
    std::vector<std::string> pools{"threads"};
#ifdef ASSOCMEM_WITH_OPENMP_WORKERS
    pools.emplace_back("openmp");
#endif
    return pools;
  });
  m.def("_worker_pool", [] { return worker_runner() == nullptr ? std::string("threads") : std::string("openmp"); });
  m.def("_set_worker_pool", [](const std::string& pool) {
    if (pool == "threads") {
      set_worker_runner(nullptr);
#ifdef ASSOCMEM_WITH_OPENMP_WORKERS
    } else if (pool == "openmp") {
      python::use_openmp_workers();
#endif
    } else {
      throw InvalidArgument(detail::concat("pool must be one of this build's worker pools (",
#ifdef ASSOCMEM_WITH_OPENMP_WORKERS
                                           "'threads', 'openmp'",
#else
                                           "'threads'; it was built without OpenMP",
#endif
                                           "), not '", pool, "'"));
    }
  });
}

}  // namespace

#ifdef ASSOCMEM_WITH_MPI
// Models A, B and C over a sharded store on the ranks of an MPI job (assocmem.distributed, on mpi4py).
// comm: the communicator's Fortran handle (mpi4py's Comm.py2f()), so no mpi4py headers are needed.
class PyDistributedStore {
 public:
  PyDistributedStore(const std::string& manifest, long comm_f) : store_(comm_of(comm_f), manifest) {}
  py::dict retrieve_b(const F32& q, double beta, std::optional<long> steps, std::optional<double> tol,
                      std::optional<double> step, std::size_t top_k, bool energy, int threads) const {
    const std::size_t n = batch_rows(q, store_.manifest().dim, "queries");
    const RetrieveOptions o = options_in(steps, tol, step, top_k, energy, std::nullopt, std::nullopt);
    EngineOptions e;
    e.threads = threads;
    Retrieval r;
    {
      py::gil_scoped_release nogil;
      r = distributed_retrieve_b(store_, beta, q.data(), n, o, e);
    }
    return result_out(std::move(r), top_k, store_.manifest().count);
  }
  py::dict retrieve_c(const F32& q, const std::string& F, double nF, double beta, double alpha, std::optional<long> steps,
                      std::optional<double> tol, std::optional<double> step, bool energy, int threads) const {
    const std::size_t n = batch_rows(q, store_.manifest().dim, "queries");
    const RetrieveOptions o = options_in(steps, tol, step, 0, energy, std::nullopt, std::nullopt);
    EngineOptions e;
    e.threads = threads;
    Retrieval r;
    {
      py::gil_scoped_release nogil;
      r = distributed_retrieve_c(store_, interaction(F, nF, beta), alpha, q.data(), n, o, e);
    }
    return result_out(std::move(r), 0, store_.manifest().count);
  }
  py::dict retrieve_a(const F32& q, const std::string& F, double nF, double beta, std::optional<long> steps,
                      std::optional<double> tol, bool energy, int threads) const {
    const std::size_t n = batch_rows(q, store_.manifest().dim, "cues");
    RetrieveOptions o = options_in(steps, tol, std::nullopt, 0, energy, std::nullopt, std::nullopt);
    o.order = UpdateOrder::Synchronous;
    EngineOptions e;
    e.threads = threads;
    Retrieval r;
    {
      py::gil_scoped_release nogil;
      std::vector<std::int8_t> s;
      std::exception_ptr failure;  // cues that are not +-1: refused on every rank (none left waiting)
      try {
        s = to_spins(q.data(), n, store_.manifest().dim, "cues");
      } catch (...) {
        failure = std::current_exception();
      }
      store_.merger().agree(failure);
      r = distributed_retrieve_a(store_, interaction(F, nF, beta), s.data(), n, o, e);
    }
    return result_out(std::move(r), 0, store_.manifest().count);
  }
  const DistributedStore& get() const { return store_; }

 private:
  static MPI_Comm comm_of(long f) {
    int ready = 0;
    MPI_Initialized(&ready);
    if (!ready) throw Error("MPI is not initialised: import mpi4py.MPI first (assocmem.distributed does)");
    return MPI_Comm_f2c(static_cast<MPI_Fint>(f));
  }
  DistributedStore store_;
};

void bind_distributed(py::module_& m) {
  py::class_<PyDistributedStore>(m, "DistributedStore")
      .def(py::init<const std::string&, long>(), py::arg("manifest"), py::arg("comm_f"))
      .def("retrieve_a", &PyDistributedStore::retrieve_a)
      .def("retrieve_b", &PyDistributedStore::retrieve_b)
      .def("retrieve_c", &PyDistributedStore::retrieve_c)
      .def_property_readonly("rank", [](const PyDistributedStore& s) { return s.get().rank(); })
      .def_property_readonly("ranks", [](const PyDistributedStore& s) { return s.get().ranks(); })
      .def_property_readonly("local_shards", [](const PyDistributedStore& s) { return s.get().local_shards(); })
      .def_property_readonly("count", [](const PyDistributedStore& s) { return s.get().manifest().count; })
      .def_property_readonly("dim", [](const PyDistributedStore& s) { return s.get().manifest().dim; });
}
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "assocmem's compiled core; use the package `assocmem`, which re-exports these names.";
  m.attr("__version__") = version();  // project(VERSION) of CMakeLists.txt, via assocmem/version.hpp
  m.attr("DEFAULT_BETA") = kDefaultBeta;  // the Python signatures' default beta (assocmem/types.hpp)

  static py::exception<SolverError> solver_error(m, "SolverError", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const IoError& e) {
      PyErr_SetString(PyExc_OSError, e.what());
    } catch (const SolverError& e) {
      PyErr_SetString(solver_error.ptr(), e.what());
    } catch (const Cancelled& e) {
      PyErr_SetString(PyExc_KeyboardInterrupt, e.what());
    } catch (const Error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });

  bind_lagrangians(m);
  bind_network(m);
  bind_layered(m);
  bind_layered_training(m);
  bind_adiabatic(m);
  bind_models(m);
  bind_store(m);
  bind_capacity(m);
  bind_glyphs(m);
  bind_attention(m);
#ifdef ASSOCMEM_WITH_MPI
  bind_distributed(m);
#endif
}
