// assocmem recall: retrieve memories for a .npy of queries with model A, B or C. Options left unset
// take the defaults of the library's one table (retrieve_defaults, default_interaction), so the
// command, C++ and Python agree. Energy and top-k cost one more pass over the memories: they are
// computed only when --details asks for them.
#include "common.hpp"
#include "ranks.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "assocmem/binary.hpp"
#include "assocmem/engine.hpp"
#include "assocmem/io.hpp"
#include "assocmem/npy.hpp"
#include "assocmem/retriever.hpp"
#include "assocmem/codes.hpp"
#include "assocmem/shards.hpp"
#include "assocmem/store.hpp"
#ifdef ASSOCMEM_WITH_MPI
#include "assocmem/distributed.hpp"
#endif

namespace assocmem::cli {
namespace {

// A sharded store's manifest (JSON) rather than a store file.
bool is_manifest(const std::string& path) {
  const InputFile f(path, "store");
  char c = 0;
  for (std::size_t at = 0; at < std::min<std::size_t>(f.size(), 64); ++at) {
    f.read_at(at, &c, 1);
    if (c != ' ' && c != '\n' && c != '\t' && c != '\r') return c == '{';
  }
  return false;
}


std::string short_number(double x);  // "%g"

struct RecallArgs {
  std::string store, queries, output, details, values, mask, model = "B", kernel = "auto";
  std::optional<std::string> F, order;
  std::optional<double> n, tol, step, certify;
  std::optional<long> steps;
  double beta = kDefaultBeta, alpha = 1.0;
  long long top_k = 5;
  std::size_t chunk = 1024;
  std::uint64_t seed = 0;
  int threads = 0;
};

// The retrieval options of the command line; unset ones stay unset (the model's defaults).
RetrieveOptions retrieve_options(const RecallArgs& a) {
  RetrieveOptions o;
  o.max_steps = a.steps;
  o.tol = a.tol;
  o.certify = a.certify;
  o.step = a.step;
  if (a.order) o.order = parse_update_order(*a.order);
  o.seed = a.seed;
  return o;
}

InteractionSpec interaction(const RecallArgs& a, ModelKind model) {
  InteractionSpec F = default_interaction(model);
  if (a.F) F.kind = parse_interaction(*a.F);
  if (a.n) F.n = *a.n;
  F.beta = a.beta;
  return F;
}

// The per-query record of --details.
json details_of(const Retrieval& r, std::size_t i) {
  json j = {{"steps", r.steps[i]}, {"stop", to_string(r.stop[i])}, {"converged", r.converged(i)}};
  if (!r.energy.empty()) j["energy"] = r.energy[i];
  if (!r.certificates.empty()) {
    const Certificate& c = r.certificates[i];
    j["certificate"] = {{"discarded_weight", c.discarded_weight}, {"state_error", c.state_error},
                        {"candidates", c.candidates}, {"fallback_steps", c.fallback_steps}};
  }
  if (!r.top.empty()) {
    json ids = json::array(), w = json::array();
    for (const TopMemory& t : r.top[i]) {
      ids.push_back(t.id);
      w.push_back(t.weight);
    }
    j["top_ids"] = ids;
    j["top_weights"] = w;
  }
  return j;
}

int recall(const RecallArgs& a, bool as_json) {
  // Every file the command reads, directly or through another (the shards a manifest names, the codes
  // beside the store that --certify reads), is known here, before anything is written, and none can be
  // an output.
  std::vector<std::pair<std::string, std::string>> inputs = {
      {"store", a.store}, {"queries", a.queries}, {"values", a.values}, {"mask", a.mask}};
  if (is_manifest(a.store)) {
    const ShardManifest m = read_manifest(a.store);
    for (std::size_t i = 0; i < m.shards.size(); ++i) inputs.emplace_back("shard", m.shard_path(i));
  } else if (a.certify) {
    inputs.emplace_back("codes", CodeIndex::default_path(a.store));
  }
  check_distinct(inputs, {{"output", a.output}, {"details", a.details}});
  if (a.top_k < 0) throw BadInput("--top-k must be >= 0, got " + std::to_string(a.top_k));
  const ModelKind model = parse_model(a.model);
  EngineOptions eo;
  eo.threads = a.threads;
  eo.kernel = parse_kernel(a.kernel);
  // The memories: a store file, or a sharded store's manifest. Under mpirun each rank holds its shards
  // and every pass is merged across ranks (assocmem/distributed.hpp); rank 0 alone writes and reports.
  // Run directly, the shards are read into one store.
  const bool sharded = is_manifest(a.store);
  const bool mpi = sharded && under_mpirun();
  bool writer = true;
  std::size_t K = 0;
  std::unique_ptr<MemoryStore> own;
#ifdef ASSOCMEM_WITH_MPI
  std::unique_ptr<DistributedStore> dist;
#endif
  if (a.certify) require(model, Capability::Certify, "--certify");
  if (!a.values.empty()) require(model, Capability::Values, "--values");
  if (!a.mask.empty()) require(model, Capability::Mask, "--mask");
  resolve(retrieve_options(a), model);  // the options against the model's defaults and capabilities, before any file is read
  if (a.certify && (sharded || !a.values.empty()))
    throw BadInput("--certify: certified retrieval runs over one store without --values (not a manifest of shards "
                   "or a value store yet)");
  if (sharded && (!a.values.empty() || !a.mask.empty()))
    throw BadInput("a sharded store: --values and --mask are not supported yet");
  if (mpi && model == ModelKind::A && (!a.order || parse_update_order(*a.order) != UpdateOrder::Synchronous))
    throw BadInput("--order: model A over shards under mpirun runs --order sync only (the random and fixed orders "
                   "visit one neuron at a time, which would take a collective per visit)");
  if (mpi) {
#ifdef ASSOCMEM_WITH_MPI
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    writer = rank == 0;
    dist = std::make_unique<DistributedStore>(MPI_COMM_WORLD, a.store);
    eo.merger = &dist->merger();
    K = dist->manifest().count;
#else
    throw BadInput("'" + a.store + "' is a sharded store and the command runs under mpirun, but this assocmem was built "
                   "without MPI (install libopenmpi-dev and rebuild), or run it without mpirun in one process");
#endif
  } else if (sharded) {
    const ShardManifest m = read_manifest(a.store);
    std::vector<std::size_t> all(m.shards.size());
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
    own = std::make_unique<MemoryStore>(open_shards(m, all));
    K = own->size();
  } else {
    own = std::make_unique<MemoryStore>(MemoryStore::open(a.store));
    K = own->size();
  }
#ifdef ASSOCMEM_WITH_MPI
  const MemoryStore& store = dist ? dist->local() : *own;
#else
  const MemoryStore& store = *own;
#endif
  const NpyArray q = read_npy(a.queries);
  if (q.cols != store.dim())
    throw BadInput("'" + a.queries + "' has queries of dimension " + std::to_string(q.cols) + " but '" + a.store +
                   "' holds memories of dimension " + std::to_string(store.dim()));
  const std::vector<float> Q = q.to_float32();
  const std::size_t B = q.rows, d = q.cols;
  if (B == 0) throw BadInput("'" + a.queries + "' holds no queries");
  std::optional<MemoryStore> values;
  if (!a.values.empty()) values.emplace(MemoryStore::open(a.values));
  // --mask: (K,) shared by all queries, or (B, K); non-zero leaves a memory out.
  std::vector<std::uint8_t> mask;
  std::size_t mask_rows = 0;
  if (!a.mask.empty()) {
    const NpyArray m = read_npy(a.mask);
    if (m.cols != K || (m.rows != 1 && m.rows != B) || (m.rows == 1 && !m.was_1d && B != 1))
      throw BadInput("--mask: '" + a.mask + "' has shape " +
                     (m.was_1d ? "(" + std::to_string(m.cols) + ",)"
                               : "(" + std::to_string(m.rows) + ", " + std::to_string(m.cols) + ")") +
                     "; expected (" + std::to_string(K) + ",) or (" + std::to_string(B) + ", " + std::to_string(K) + ")");
    // The one mask rule of every face (C++ takes uint8 0/1, Python and torch bool or 0/1): bool, or the
    // numbers 0 and 1; anything else (0.5, 2, NaN) has no agreed meaning and is refused.
    const std::vector<float> values = m.to_float32();
    for (std::size_t k = 0; k < values.size(); ++k) {
      if (values[k] != 0.0f && values[k] != 1.0f)
        throw BadInput("--mask: '" + a.mask + "' holds " + std::to_string(values[k]) + " at row " +
                       std::to_string(k / K) + ", memory " + std::to_string(k % K) +
                       "; a mask holds bool or 0/1 (1 leaves the memory out)");
      mask.push_back(values[k] != 0.0f);
    }
    mask_rows = m.rows;
  }
  const bool details = !a.details.empty();
  RetrieveOptions o = retrieve_options(a);
  o.energy = details;
  if (details && supports(model, Capability::TopK)) o.top_k = static_cast<std::size_t>(a.top_k);

  // The library's retrieval context: model A's packed bits (under mpirun each rank packs its own shards, a
  // failure agreed on by every rank), models B and C's engine and codes.
  const auto make = [&]() {
    if (model == ModelKind::A) return Retriever::model_a(store, interaction(a, model), Vector(), eo);
    if (model == ModelKind::B) return Retriever::model_b(store, values ? &*values : nullptr, a.beta, eo);
    return Retriever::model_c(store, interaction(a, model), a.alpha, eo);
  };
  std::optional<Retriever> ret;
  try {
    ret.emplace(make());
  } catch (const InvalidArgument& e) {
    if (model != ModelKind::A) throw;
    throw InvalidArgument("'" + a.store + "': " + e.what());  // memories that are not +-1 (exit 2)
  }
  const std::string kernel = ret->kernel();
  if (a.certify) ret->prepare_codes();  // the codes beside the store (assocmem index), else built for this run
  const bool ea = model == ModelKind::A;
  const std::size_t dout = ret->value_dim();
  std::vector<float> states(B * dout);
  json per_query = json::array();
  ProgressBar bar("recall");
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::int8_t> cues;
  double worst_discarded = 0, uniform_weight = 0;
  std::size_t fallback_queries = 0, blew_up = 0, uniform = 0;
  if (ea) {
    try {
      cues = to_spins(Q.data(), B, d, "'" + a.queries + "'");
    } catch (const InvalidArgument& e) {
      throw BadInput(e.what());
    }
  }
  for (std::size_t b0 = 0; b0 < B; b0 += a.chunk) {
    const std::size_t nb = std::min(a.chunk, B - b0);
    o.mask = {mask.empty() ? nullptr : mask.data() + (mask_rows == 1 ? 0 : b0 * K), mask_rows == 0 ? 0 : (mask_rows == 1 ? 1 : nb)};
    if (!mpi)  // a monitor could cancel one rank alone: none under mpirun
      o.monitor = [&](const Progress& p) {
        bar.update((double(b0) + nb * (double(p.step - 1) + p.fraction) / double(p.max_steps)) / double(B));
        return true;
      };
    Retrieval r;
    if (ea) {
      o.seed = a.seed + b0;  // cue b uses seed + b, as in one call
      r = ret->retrieve(&cues[b0 * d], nb, o);
    } else {
      r = ret->retrieve(&Q[b0 * d], nb, o);
    }
    std::transform(r.states.begin(), r.states.end(), &states[b0 * dout], [](double x) { return static_cast<float>(x); });
    for (const Certificate& c : r.certificates) {
      worst_discarded = std::max(worst_discarded, c.discarded_weight);
      fallback_queries += c.fallback_steps > 0;
    }
    for (std::size_t i = 0; i < nb; ++i) {
      blew_up += r.stop[i] == StopReason::BlewUp;
      if (!r.max_weight.empty() && nearly_uniform(r.max_weight[i], K)) {
        ++uniform;
        uniform_weight = std::max(uniform_weight, r.max_weight[i]);
      }
    }
    if (details)
      for (std::size_t i = 0; i < nb; ++i) per_query.push_back(details_of(r, i));
    bar.update(double(b0 + nb) / double(B));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!writer) return 0;  // under mpirun every rank holds the same result; rank 0 writes it
  write_npy(a.output, states.data(), B, dout, q.was_1d);
  json summary = {{"model", a.model}, {"queries", B}, {"dim", d}, {"memories", K}, {"kernel", kernel},
                  {"seconds", secs}, {"output", a.output}};
#ifdef ASSOCMEM_WITH_MPI
  if (dist) summary["ranks"] = dist->ranks();
#endif
  summary["blew_up"] = blew_up;
  if (model == ModelKind::B) summary["nearly_uniform"] = uniform;
  if (a.certify)
    summary["certified"] = {{"eps", *a.certify},
                            {"codes", ret->codes_source() == "built in memory" ? "built for this run" : ret->codes_source()},
                            {"max_discarded_weight", worst_discarded}, {"queries_that_fell_back", fallback_queries}};
  if (details) {
    json full = summary;
    full["results"] = per_query;
    const std::string text = dump(full);
    write_file_atomically(a.details, {{text.data(), text.size()}});
    summary["details"] = a.details;
  }
  emit(as_json, summary,
       "recalled " + std::to_string(B) + " queries with model " + a.model + " (" + kernel + ") in " +
           std::to_string(secs).substr(0, 6) + " s; wrote " + a.output + (details ? " and " + a.details : "") +
           (a.certify ? "; certified: discarded weight <= " + short_number(worst_discarded) + " (eps " +
                            short_number(*a.certify) + "), " + std::to_string(fallback_queries) +
                            " queries fell back to the exact scan"
                      : "") +
           "\n");
  // What the numbers alone would not say (issue 23): states that left the float range, and model B
  // associations so flat that the result is nearly the mean of the memories.
  if (blew_up)
    std::fprintf(stderr, "assocmem: warning: %zu of %zu queries blew up (the state left the float range; the output "
                 "holds the last finite state): lower beta or the step, or scale the memories down\n", blew_up, B);
  if (uniform)
    std::fprintf(stderr, "assocmem: warning: for %zu of %zu queries no memory carries more than 10/K of the weight "
                 "(largest weight %.3g, 1/K = %.3g): the result is nearly the mean of the memories; raise --beta "
                 "(README: choosing beta)\n", uniform, B, uniform_weight, 1.0 / double(K));
  return 0;
}

// recall; under mpirun over a sharded store, as one rank of the job (ranks.hpp: one agreement on the
// outcome at the end, rank 0 reports and writes, no output unless every rank succeeded).
int cmd_recall(const RecallArgs& a, bool as_json) {
  if (built_with_mpi() && under_mpirun() && is_manifest(a.store))
    return on_ranks(as_json, [&](int, int) { return recall(a, as_json); });
  return recall(a, as_json);
}

std::string short_number(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", x);
  return buf;
}

// "(default: A 1000, B 1, C 100)" from the one table of defaults.
template <class Get>
std::string per_model_default(Get get) {
  return "(default: A " + get(ModelKind::A) + ", B " + get(ModelKind::B) + ", C " + get(ModelKind::C) + ")";
}

}  // namespace

Command add_recall(CLI::App& app) {
  auto a = std::make_shared<RecallArgs>();
  auto* rc = app.add_subcommand("recall", "Retrieve memories for a .npy of queries with model A, B or C");
  rc->add_option("store", a->store, "Memory store (the keys, for model B with --values), or a sharded store's "
                                    "manifest.json (assocmem shard); under mpirun each rank holds its shards "
                                    "and rank 0 writes the result (model A: --order sync)")->required();
  rc->add_option("queries", a->queries, "Queries (.npy, (B, d) or (d,))")->required();
  rc->add_option("output", a->output, "Retrieved states (.npy, float32, the queries' shape; with --values the values' dimension)")
      ->required();
  rc->add_option("--model", a->model, "A (dense associative memory), B (modern Hopfield) or C (spherical)")
      ->capture_default_str()->check(CLI::IsMember({"A", "B", "C"}));
  rc->add_option("--beta", a->beta, "Inverse temperature (B) or gain of F = exp (A, C)")->capture_default_str();
  const InteractionSpec Fa = default_interaction(ModelKind::A), Fc = default_interaction(ModelKind::C);
  rc->add_option("--F", a->F, "Interaction of A and C: power, rectified or exp (default: A " + to_string(Fa.kind) + ", C " +
                                  to_string(Fc.kind) + ")")
      ->check(CLI::IsMember({"power", "rectified", "exp"}));
  rc->add_option("--n", a->n, "Power n of F (A, C) (default " + short_number(Fa.n) + ")");
  rc->add_option("--alpha", a->alpha, "Decay coefficient of model C (eq. 19)")->capture_default_str();
  rc->add_option("--steps,--max-sweeps", a->steps, "Most updates: sweeps (A), steps of eq. 15 (B), Euler steps of eq. 22 (C) " +
                                                       per_model_default([](ModelKind m) { return std::to_string(retrieve_defaults(m).max_steps); }))
      ->transform(whole<long>(1, kMaxRetrieveSteps));
  rc->add_option("--tol", a->tol, "Stop a query when its change is <= tol (A: flips of a sweep; B, C: max |v_new - v|) " +
                                      per_model_default([](ModelKind m) { return short_number(retrieve_defaults(m).tol); }));
  rc->add_option("--step", a->step, "dt / tau_f of each update (B: (0, 1], C: > 0) (default: B " +
                                        short_number(retrieve_defaults(ModelKind::B).step) + ", C " +
                                        short_number(retrieve_defaults(ModelKind::C).step) + ")");
  rc->add_option("--order", a->order, "Update order of model A: random, fixed or sync (default " +
                                          to_string(retrieve_defaults(ModelKind::A).order) + ")")
      ->check(CLI::IsMember({"random", "fixed", "sync"}));
  rc->add_option("--seed", a->seed, "Seed of model A's random order (query b uses seed + b)")->capture_default_str()
      ->transform(whole<std::uint64_t>());
  rc->add_option("--values", a->values, "Model B: a store of values (same number of memories as the keys): the result "
                                        "is the attention output over the values (hetero-association)");
  rc->add_option("--mask", a->mask, "B, C: .npy of bool or 0/1 numbers, shape (K,) or (B, K); 1 (True) leaves that memory "
                                    "out for that query, as if deleted");
  rc->add_option("--certify", a->certify, "B, C (F = rectified or exp): certified retrieval with this eps in (0, 0.5]: "
                                         "screen the codes (STORE.codes from assocmem index, else built for the run), "
                                         "rescore exactly the memories that can carry weight; the weight left out is "
                                         "<= eps (--details has each query's certificate)");
  rc->add_option("--top-k", a->top_k, "Memories to report per query in --details (B; at most K are reported)")
      ->capture_default_str()->transform(whole<long long>(0));
  rc->add_option("--details", a->details, "Write JSON with steps, stop reason, energy and top-k ids and weights (one "
                                          "more pass over the memories)");
  rc->add_option("--threads", a->threads, "Worker threads (0: the CPUs this process may run on)")->capture_default_str()->transform(whole<int>(0));
  rc->add_option("--kernel", a->kernel, "auto, generic, sse4, avx2, avx512, avx512_bf16, amx_bf16, neon, sve or sve2 (those this CPU runs; auto: ASSOCMEM_KERNEL if set, else the best)")->capture_default_str();
  return {rc, [a](bool as_json) { return cmd_recall(*a, as_json); }};
}

}  // namespace assocmem::cli
