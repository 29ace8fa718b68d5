// The retrieval context over one store (retriever.hpp): the model's engine, and on demand the codes of
// certified retrieval and the candidate source of approximate retrieval, each with the engine over it.
#include "assocmem/retriever.hpp"

#include <filesystem>
#include <mutex>
#include <utility>

#include "assocmem/codes.hpp"
#include "assocmem/error.hpp"

namespace assocmem {

struct Retriever::Impl {
  ModelKind kind = ModelKind::B;
  const MemoryStore* keys = nullptr;
  const MemoryStore* values = nullptr;
  double beta = 1.0;
  InteractionSpec F;
  double alpha = 1.0;
  EngineOptions options;
  std::unique_ptr<ModelBEngine> b;
  std::unique_ptr<ModelCEngine> c;
  std::unique_ptr<MemoryStore> packed;  // model A: a float store's memories as bits
  std::unique_ptr<ModelAEngine> a;

  mutable std::mutex mu;  // guards what follows, built on demand
  mutable std::unique_ptr<CodeIndex> codes;
  mutable std::string codes_source;
  mutable std::unique_ptr<ModelBEngine> certified_b;
  mutable std::unique_ptr<ModelCEngine> certified_c;
  // The candidate source and the engine over it, together: a call holds both while it runs, so that a
  // new source never frees one in use.
  struct Approximate {
    std::shared_ptr<const CandidateSource> source;
    std::unique_ptr<ModelBEngine> engine;
  };
  CandidateFactory factory;
  mutable std::shared_ptr<const Approximate> approximate;

  EngineOptions with(const CodeIndex* c, const CandidateSource* s) const {
    EngineOptions o = options;
    o.codes = c;
    o.candidates = s;
    return o;
  }

  // Under mu.
  void open_codes() const {
    if (codes) return;
    const std::string path = keys->source().empty() ? std::string() : CodeIndex::default_path(keys->source());
    if (!path.empty() && std::filesystem::exists(path)) {
      codes = std::make_unique<CodeIndex>(CodeIndex::open(path, *keys));
      codes_source = path;
    } else {
      codes = std::make_unique<CodeIndex>(CodeIndex::build(*keys, options.threads));
      codes_source = "built in memory";
    }
  }

  std::shared_ptr<const Approximate> make_approximate(std::shared_ptr<const CandidateSource> source) const {
    ASSOCMEM_CHECK_ARG(source != nullptr, "approximate: the candidate source is null");
    ASSOCMEM_CHECK_ARG(source->size() == keys->size(), "approximate: the candidate source indexes ", source->size(),
                       " memories but the store holds ", keys->size());
    auto a = std::make_shared<Approximate>();
    a->engine = std::make_unique<ModelBEngine>(*keys, beta, with(nullptr, source.get()));
    a->source = std::move(source);
    return a;
  }

  void refuse_approximate_with_values() const {
    require(kind, Capability::Approximate, "approximate");
    ASSOCMEM_CHECK_ARG(!values, "approximate: not supported yet with a value store");
  }
};

Retriever::Retriever(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Retriever::~Retriever() = default;
Retriever::Retriever(Retriever&&) noexcept = default;
Retriever& Retriever::operator=(Retriever&&) noexcept = default;

Retriever Retriever::model_b(const MemoryStore& keys, const MemoryStore* values, double beta, EngineOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->kind = ModelKind::B;
  impl->keys = &keys;
  impl->values = values;
  impl->beta = beta;
  impl->options = options;
  impl->b = values ? std::make_unique<ModelBEngine>(keys, *values, beta, options)
                   : std::make_unique<ModelBEngine>(keys, beta, options);
  return Retriever(std::move(impl));
}

Retriever Retriever::model_c(const MemoryStore& store, const InteractionSpec& F, double alpha, EngineOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->kind = ModelKind::C;
  impl->keys = &store;
  impl->F = F;
  impl->alpha = alpha;
  impl->options = options;
  impl->c = std::make_unique<ModelCEngine>(store, F, alpha, options);
  return Retriever(std::move(impl));
}

Retriever Retriever::model_a(const MemoryStore& store, const InteractionSpec& F, Vector current, EngineOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->kind = ModelKind::A;
  impl->keys = &store;
  impl->F = F;
  impl->options = options;
  // Each rank of an MPI job packs its own memories and makes its engine (no collective in either): a failure
  // on any rank is agreed on by every rank, which then throws it (none is left waiting in a collective).
  std::exception_ptr failure;
  try {
    if (store.dtype() != DType::Bits) impl->packed = std::make_unique<MemoryStore>(pack_bits(store));
    impl->a = std::make_unique<ModelAEngine>(impl->packed ? *impl->packed : store, F, std::move(current), options);
  } catch (...) {
    failure = std::current_exception();
  }
  if (options.merger) options.merger->agree(failure);
  else if (failure) std::rethrow_exception(failure);
  return Retriever(std::move(impl));
}

Retrieval Retriever::retrieve(const std::int8_t* cues, std::size_t batch, const RetrieveOptions& o) const {
  ASSOCMEM_CHECK_ARG(impl_->a != nullptr, "retrieve: +-1 cues are model A's; this retriever runs model ",
                     to_string(impl_->kind));
  return impl_->a->retrieve(cues, batch, o);
}

Retrieval Retriever::retrieve(const float* queries, std::size_t batch, const RetrieveOptions& o) const {
  const Impl& m = *impl_;
  if (m.kind == ModelKind::A) {
    const std::vector<std::int8_t> cues = to_spins(queries, batch, m.a->n_features(), "queries");
    return retrieve(cues.data(), batch, o);
  }
  if (m.kind == ModelKind::C) {
    if (!o.certify) return m.c->retrieve(queries, batch, o);
    const ModelCEngine* e = nullptr;
    {
      std::lock_guard<std::mutex> lock(m.mu);
      if (!m.certified_c) {
        m.open_codes();
        m.certified_c = std::make_unique<ModelCEngine>(*m.keys, m.F, m.alpha, m.with(m.codes.get(), nullptr));
      }
      e = m.certified_c.get();
    }
    return e->retrieve(queries, batch, o);
  }
  // Model B. With values, or both approximate and certify, the plain engine refuses the call, clearly.
  const bool plain = m.values || (o.approximate && o.certify);
  if (plain || (!o.approximate && !o.certify)) return m.b->retrieve(queries, batch, o);
  if (o.approximate) {
    std::shared_ptr<const Impl::Approximate> a;
    {
      std::lock_guard<std::mutex> lock(m.mu);
      if (!m.approximate) {
        ASSOCMEM_CHECK_ARG(m.factory != nullptr,
                           "approximate: no candidate source (set_candidates, or a factory such as the ANN "
                           "component's AnnIndex::build)");
        m.approximate = m.make_approximate(m.factory(*m.keys));
      }
      a = m.approximate;
    }
    return a->engine->retrieve(queries, batch, o);
  }
  const ModelBEngine* e = nullptr;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    if (!m.certified_b) {
      m.open_codes();
      m.certified_b = std::make_unique<ModelBEngine>(*m.keys, m.beta, m.with(m.codes.get(), nullptr));
    }
    e = m.certified_b.get();
  }
  return e->retrieve(queries, batch, o);
}

void Retriever::prepare_codes() const {
  require(impl_->kind, Capability::Certify, "prepare_codes");
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->open_codes();
}

std::string Retriever::codes_source() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->codes_source;
}

void Retriever::set_candidate_factory(CandidateFactory factory) {
  impl_->refuse_approximate_with_values();
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->factory = std::move(factory);
  impl_->approximate.reset();
}

void Retriever::set_candidates(std::shared_ptr<const CandidateSource> source) {
  impl_->refuse_approximate_with_values();
  auto a = impl_->make_approximate(std::move(source));  // the engine is made outside the lock
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->approximate = std::move(a);
}

std::shared_ptr<const CandidateSource> Retriever::candidates() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->approximate ? impl_->approximate->source : nullptr;
}

ModelKind Retriever::model() const { return impl_->kind; }

const ModelAEngine& Retriever::engine_a() const {
  ASSOCMEM_CHECK_ARG(impl_->a != nullptr, "engine_a: this retriever runs model ", to_string(impl_->kind));
  return *impl_->a;
}

const ModelBEngine& Retriever::engine_b() const {
  ASSOCMEM_CHECK_ARG(impl_->b != nullptr, "engine_b: this retriever runs model ", to_string(impl_->kind));
  return *impl_->b;
}

const ModelCEngine& Retriever::engine_c() const {
  ASSOCMEM_CHECK_ARG(impl_->c != nullptr, "engine_c: this retriever runs model ", to_string(impl_->kind));
  return *impl_->c;
}

std::string Retriever::kernel() const {
  return impl_->a ? impl_->a->kernel() : impl_->b ? impl_->b->kernel() : impl_->c->kernel();
}
std::size_t Retriever::dim() const {
  return impl_->a ? impl_->a->n_features() : impl_->b ? impl_->b->dim() : impl_->c->dim();
}
std::size_t Retriever::value_dim() const { return impl_->b ? impl_->b->value_dim() : dim(); }
std::size_t Retriever::size() const {
  return impl_->a ? impl_->a->n_memories() : impl_->b ? impl_->b->size() : impl_->c->size();
}

}  // namespace assocmem
