// Models B and C over the ranks of an MPI job (distributed.hpp): the exact merge of every pass.
#include "assocmem/distributed.hpp"

#include <algorithm>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "assocmem/binary.hpp"
#include "assocmem/retriever.hpp"

namespace assocmem {
namespace {

std::string describe_rank(int rank, const std::vector<std::size_t>& shards) {
  std::string s = "rank " + std::to_string(rank);
  if (shards.empty()) return s;
  s += shards.size() == 1 ? " (shard " : " (shards ";
  for (std::size_t i = 0; i < shards.size(); ++i) s += (i ? ", " : "") + std::to_string(shards[i]);
  return s + ")";
}

class MpiMerger final : public PassMerger {
 public:
  MpiMerger(MPI_Comm comm, int rank, int ranks) : comm_(comm), rank_(rank), ranks_(ranks), who_(describe_rank(rank, {})) {}
  void set_shards(const std::vector<std::size_t>& shards) { who_ = describe_rank(rank_, shards); }

  void agree(std::exception_ptr failure) const override { agree_across_ranks(comm_, failure, who_); }

  void merge(AttentionPartial& p) const override {
    const std::size_t n = p.batch, dim = p.dim;
    std::vector<float>& top = top_;
    top.resize(n);
    MPI_Allreduce(p.max.data(), top.data(), static_cast<int>(n), MPI_FLOAT, MPI_MAX, comm_);
    // Sums and weighted rows moved to the common maximum (the online softmax's one rescaling), then summed.
    std::vector<double>& buf = buf_;
    buf.resize(n + n * dim);
    std::fill(buf.begin(), buf.end(), 0.0);
    for (std::size_t b = 0; b < n; ++b) p.add_rescaled(b, double(top[b]), buf[b], &buf[n + b * dim]);
    MPI_Allreduce(MPI_IN_PLACE, buf.data(), static_cast<int>(buf.size()), MPI_DOUBLE, MPI_SUM, comm_);
    std::copy(top.begin(), top.end(), p.max.begin());
    std::copy(buf.begin(), buf.begin() + static_cast<long>(n), p.sum.begin());
    for (std::size_t i = 0; i < n * dim; ++i) p.acc[i] = static_cast<float>(buf[n + i]);
    if (p.top_k == 0) return;
    // Top-k: every rank's best k per query gathered, merged by score (then id), the engine's order.
    const std::size_t k = p.top_k;
    std::vector<float> sc(n * k, -std::numeric_limits<float>::infinity());
    std::vector<std::uint64_t> id(n * k, 0);
    for (std::size_t b = 0; b < n; ++b)
      for (std::size_t i = 0; i < std::min(k, p.top[b].size()); ++i) sc[b * k + i] = p.top[b][i].score, id[b * k + i] = p.top[b][i].id;
    std::vector<float> all_sc(sc.size() * static_cast<std::size_t>(ranks_));
    std::vector<std::uint64_t> all_id(id.size() * static_cast<std::size_t>(ranks_));
    MPI_Allgather(sc.data(), static_cast<int>(sc.size()), MPI_FLOAT, all_sc.data(), static_cast<int>(sc.size()), MPI_FLOAT, comm_);
    MPI_Allgather(id.data(), static_cast<int>(id.size()), MPI_UINT64_T, all_id.data(), static_cast<int>(id.size()),
                  MPI_UINT64_T, comm_);
    for (std::size_t b = 0; b < n; ++b) {
      std::vector<ScoredId> cand;
      for (int r = 0; r < ranks_; ++r)
        for (std::size_t i = 0; i < k; ++i) {
          const std::size_t at = (static_cast<std::size_t>(r) * n + b) * k + i;
          if (all_sc[at] != -std::numeric_limits<float>::infinity()) cand.push_back({all_sc[at], all_id[at]});
        }
      std::sort(cand.begin(), cand.end(), [](const ScoredId& x, const ScoredId& y) {
        return x.score != y.score ? x.score > y.score : x.id < y.id;
      });
      if (cand.size() > k) cand.resize(k);
      p.top[b] = std::move(cand);
    }
  }

  void merge_sums(std::vector<float>& drive, std::vector<double>& energy) const override {
    std::vector<double>& buf = buf_;
    buf.assign(drive.begin(), drive.end());
    buf.insert(buf.end(), energy.begin(), energy.end());
    MPI_Allreduce(MPI_IN_PLACE, buf.data(), static_cast<int>(buf.size()), MPI_DOUBLE, MPI_SUM, comm_);
    for (std::size_t i = 0; i < drive.size(); ++i) drive[i] = static_cast<float>(buf[i]);
    std::copy(buf.begin() + static_cast<long>(drive.size()), buf.end(), energy.begin());
  }

  // Model A. OpenMPI reduces each element once (or pairwise, commutatively) and hands every rank the
  // same bits, so decisions taken from these sums (signs, fallbacks) agree on every rank.
  void sum(double* values, std::size_t n) const override { allreduce(values, n, MPI_DOUBLE, MPI_SUM); }
  void sum(std::int64_t* values, std::size_t n) const override { allreduce(values, n, MPI_INT64_T, MPI_SUM); }
  std::int64_t max(std::int64_t value) const override {
    allreduce(&value, 1, MPI_INT64_T, MPI_MAX);
    return value;
  }

 private:
  // In place, in pieces that fit MPI's int counts.
  void allreduce(void* data, std::size_t n, MPI_Datatype type, MPI_Op op) const {
    int size = 0;
    MPI_Type_size(type, &size);
    constexpr std::size_t kMax = 1u << 30;
    for (std::size_t at = 0; at < n; at += kMax)
      MPI_Allreduce(MPI_IN_PLACE, static_cast<char*>(data) + at * static_cast<std::size_t>(size),
                    static_cast<int>(std::min(kMax, n - at)), type, op, comm_);
  }

  MPI_Comm comm_;
  int rank_, ranks_;
  std::string who_;
  // Buffers kept between passes: fresh large allocations cost page faults every pass (measured: most of
  // the merge's time at 256 queries). The merger's methods are collective, called by one thread at a time.
  mutable std::vector<double> buf_;
  mutable std::vector<float> top_;
};

}  // namespace

void agree_across_ranks(MPI_Comm comm, std::exception_ptr failure, const std::string& who) {
  // 0: fine; 1 InvalidArgument, 2 IoError, 3 SolverError, 4 anything else.
  int code = 0;
  std::string msg;
  if (failure) {
    try {
      std::rethrow_exception(failure);
    } catch (const InvalidArgument& e) {
      code = 1, msg = e.what();
    } catch (const IoError& e) {
      code = 2, msg = e.what();
    } catch (const SolverError& e) {
      code = 3, msg = e.what();
    } catch (const std::exception& e) {
      code = 4, msg = e.what();
    } catch (...) {
      code = 4, msg = "unknown exception";
    }
  }
  int worst = 0;
  MPI_Allreduce(&code, &worst, 1, MPI_INT, MPI_MAX, comm);
  if (worst == 0) return;
  int ranks = 1;
  MPI_Comm_size(comm, &ranks);
  // Every rank learns every failure: codes, then the messages.
  std::vector<int> codes(static_cast<std::size_t>(ranks));
  MPI_Allgather(&code, 1, MPI_INT, codes.data(), 1, MPI_INT, comm);
  // "who \x1f message"; a message that already names its ranks (an agreed one) has no who.
  const std::string mine = !code ? std::string() : (msg.rfind("rank", 0) == 0 || msg.rfind("every rank", 0) == 0 ? "" : who) + '\x1f' + msg;
  int len = static_cast<int>(mine.size());
  std::vector<int> lens(codes.size()), displs(codes.size(), 0);
  MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, comm);
  for (std::size_t r = 1; r < lens.size(); ++r) displs[r] = displs[r - 1] + lens[r - 1];
  std::string all(static_cast<std::size_t>(displs.back() + lens.back()), '\0');
  MPI_Allgatherv(mine.data(), len, MPI_CHAR, all.data(), lens.data(), displs.data(), MPI_CHAR, comm);
  // Identical messages grouped: "every rank: m", "rank 1 (shard 1), rank 3 (shard 3): m", or m as agreed.
  std::vector<std::pair<std::string, std::vector<std::string>>> groups;  // message, whos
  int first = 0;
  std::size_t failing = 0;
  for (std::size_t r = 0; r < codes.size(); ++r) {
    if (!codes[r]) continue;
    if (!first) first = codes[r];
    ++failing;
    const std::string m = all.substr(static_cast<std::size_t>(displs[r]), static_cast<std::size_t>(lens[r]));
    const std::size_t sep = m.find('\x1f');
    const std::string w = m.substr(0, sep), text = m.substr(sep + 1);
    auto g = std::find_if(groups.begin(), groups.end(), [&](const auto& x) { return x.first == text; });
    if (g == groups.end()) groups.push_back({text, {}}), g = groups.end() - 1;
    if (!w.empty()) g->second.push_back(w);
  }
  std::string text;
  for (const auto& [m, whos] : groups) {
    std::string head;
    if (whos.size() == codes.size() && whos.size() > 1) head = "every rank";
    for (std::size_t i = 0; head.empty() && i < whos.size(); ++i) head += (i ? ", " : "") + whos[i];
    if (whos.size() > 1 && head != "every rank") head.clear();
    for (std::size_t i = 0; head.empty() && i < whos.size(); ++i) head += (i ? ", " : "") + whos[i];
    text += (text.empty() ? "" : "; ") + (head.empty() ? m : head + ": " + m);
  }
  (void)failing;
  switch (first) {  // the kind of the lowest failing rank's error
    case 1: throw InvalidArgument(text);
    case 2: throw IoError(text);
    case 3: throw SolverError(text);
    default: throw Error(text);
  }
}

DistributedStore::DistributedStore(MPI_Comm comm, const std::string& manifest, const OpenOptions& options) : comm_(comm) {
  MPI_Comm_rank(comm, &rank_);
  MPI_Comm_size(comm, &ranks_);
  auto merger = std::make_unique<MpiMerger>(comm, rank_, ranks_);
  std::exception_ptr failure;
  try {
    manifest_ = read_manifest(manifest, ShardCheck::Headers);
    const std::size_t S = manifest_.shards.size();
    ASSOCMEM_CHECK_ARG(static_cast<std::size_t>(ranks_) <= S, "the job has ", ranks_, " ranks but '", manifest, "' ",
                       S, S == 1 ? " shard" : " shards", "; run at most one rank per shard");
    for (std::size_t i = static_cast<std::size_t>(rank_); i < S; i += static_cast<std::size_t>(ranks_))
      local_shards_.push_back(i);
    merger->set_shards(local_shards_);
    local_ = std::make_unique<MemoryStore>(open_shards(manifest_, local_shards_, options));
  } catch (...) {
    failure = std::current_exception();
  }
  merger->agree(failure);  // every rank throws if any failed, naming it
  merger_ = std::move(merger);
}

DistributedStore::~DistributedStore() = default;

namespace {
// An engine of type E over this rank's memories (local: the rank's store or a copy of it), its passes
// merged across ranks; a construction that fails on one rank (a bad beta, kernel or F) throws on every rank.
template <class E, class... Args>
std::unique_ptr<E> merged_engine(const DistributedStore& store, const MemoryStore& local, EngineOptions engine,
                                 Args&&... args) {
  engine.merger = &store.merger();
  std::unique_ptr<E> e;
  std::exception_ptr failure;
  try {
    e = std::make_unique<E>(local, std::forward<Args>(args)..., engine);
  } catch (...) {
    failure = std::current_exception();
  }
  store.merger().agree(failure);
  return e;
}
}  // namespace

Retrieval distributed_retrieve_a(const DistributedStore& store, InteractionSpec F, const std::int8_t* cues,
                                 std::size_t batch, const RetrieveOptions& options, EngineOptions engine) {
  // Model A runs on bits: shards of +-1 floats are packed on their rank (a shard with another value fails
  // there, and the ranks agree on it: Retriever::model_a).
  engine.merger = &store.merger();
  return Retriever::model_a(store.local(), F, Vector(), engine).retrieve(cues, batch, options);
}

Retrieval distributed_retrieve_b(const DistributedStore& store, double beta, const float* queries, std::size_t batch,
                                 const RetrieveOptions& options, EngineOptions engine) {
  return merged_engine<ModelBEngine>(store, store.local(), engine, beta)->retrieve(queries, batch, options);
}

Retrieval distributed_retrieve_c(const DistributedStore& store, InteractionSpec F, double alpha, const float* queries,
                                 std::size_t batch, const RetrieveOptions& options, EngineOptions engine) {
  return merged_engine<ModelCEngine>(store, store.local(), engine, F, alpha)->retrieve(queries, batch, options);
}

MpiTrialScheduler::MpiTrialScheduler(MPI_Comm comm) : comm_(comm) {
  MPI_Comm_rank(comm, &rank_);
  MPI_Comm_size(comm, &ranks_);
}

bool MpiTrialScheduler::mine(std::size_t trial) const {
  return trial % static_cast<std::size_t>(ranks_) == static_cast<std::size_t>(rank_);
}

void MpiTrialScheduler::share(std::vector<TrialOutcome>& outcomes, std::exception_ptr failure) const {
  agree_across_ranks(comm_, failure, "rank " + std::to_string(rank_));
  std::vector<std::uint64_t> buf(4 * outcomes.size(), 0);  // each trial from its rank, zeros elsewhere
  for (std::size_t t = 0; t < outcomes.size(); ++t)
    if (mine(t)) {
      buf[4 * t] = outcomes[t].hits;
      buf[4 * t + 1] = outcomes[t].cues;
      buf[4 * t + 2] = outcomes[t].wrong_bits;
      buf[4 * t + 3] = outcomes[t].probed_bits;
    }
  MPI_Allreduce(MPI_IN_PLACE, buf.data(), static_cast<int>(buf.size()), MPI_UINT64_T, MPI_SUM, comm_);
  for (std::size_t t = 0; t < outcomes.size(); ++t)
    outcomes[t] = {buf[4 * t], buf[4 * t + 1], buf[4 * t + 2], buf[4 * t + 3]};
}

}  // namespace assocmem
