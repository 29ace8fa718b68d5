// Approximate candidates from FAISS (ann.hpp).
#include "assocmem/ann.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/impl/FaissException.h>
#include <faiss/index_io.h>
#include <faiss/impl/io.h>

#include "assocmem/io.hpp"

namespace assocmem {

struct AnnIndex::Impl {
  std::unique_ptr<faiss::Index> index;
};

void AnnOptions::validate() const {
  ASSOCMEM_CHECK_ARG(kind == "ivf" || kind == "hnsw", "ann: kind must be 'ivf' or 'hnsw', got '", kind, "'");
  ASSOCMEM_CHECK_ARG(probes > 0, "ann: probes must be > 0");
  ASSOCMEM_CHECK_ARG(links >= 2 && links <= 512, "ann: links must be in [2, 512], got ", links);
  ASSOCMEM_CHECK_ARG(ef_search > 0, "ann: ef_search must be > 0");
}

AnnIndex::~AnnIndex() = default;

std::unique_ptr<AnnIndex> AnnIndex::build(const MemoryStore& store, const AnnOptions& options) {
  options.validate();
  ASSOCMEM_CHECK_ARG(store.dtype() != DType::Bits, "ann: a store of bits has no inner-product index (model A)");
  const std::size_t K = store.size(), d = store.dim();
  ASSOCMEM_CHECK_ARG(K > 0, "ann: the store is empty");
  std::unique_ptr<AnnIndex> a(new AnnIndex());
  a->impl_ = std::make_unique<Impl>();
  a->count_ = K;
  a->dim_ = d;
  a->options_ = options;
  const auto di = static_cast<faiss::Index::idx_t>(d);
  // Rows in float32, a chunk at a time (bfloat16 stores decoded).
  auto rows = [&](std::size_t r0, std::size_t n, std::vector<float>& x) {
    x.resize(n * d);
    for (std::size_t r = 0; r < n; ++r) store.decode_row(r0 + r, &x[r * d]);
  };
  try {
    std::vector<float> x;
    if (options.kind == "ivf") {
      // Default: 4 sqrt(K) cells, at most K / 39 (FAISS's k-means asks for 39 points per centroid).
      std::size_t lists = options.lists ? options.lists : std::min(std::size_t(4 * std::sqrt(double(K))), K / 39);
      lists = std::clamp<std::size_t>(lists, 1, K);
      a->options_.lists = lists;
      a->options_.probes = std::min(options.probes, lists);
      auto* quantizer = new faiss::IndexFlatIP(di);
      auto ivf = std::make_unique<faiss::IndexIVFScalarQuantizer>(quantizer, di, lists, faiss::ScalarQuantizer::QT_8bit,
                                                                   faiss::METRIC_INNER_PRODUCT);
      ivf->own_fields = true;
      ivf->cp.seed = static_cast<int>(options.seed % 2147483647);
      // Training sample: 64 memories per cell, spread evenly over the store.
      const std::size_t ns = std::min(K, 64 * lists);
      std::vector<float> sample(ns * d);
      for (std::size_t s = 0; s < ns; ++s) store.decode_row(s * K / ns, &sample[s * d]);
      ivf->train(static_cast<faiss::Index::idx_t>(ns), sample.data());
      for (std::size_t r0 = 0; r0 < K; r0 += 65536) {
        const std::size_t n = std::min<std::size_t>(65536, K - r0);
        rows(r0, n, x);
        ivf->add(static_cast<faiss::Index::idx_t>(n), x.data());
      }
      ivf->nprobe = a->options_.probes;
      a->impl_->index = std::move(ivf);
    } else {
      auto hnsw = std::make_unique<faiss::IndexHNSWFlat>(static_cast<int>(di), static_cast<int>(options.links),
                                                         faiss::METRIC_INNER_PRODUCT);
      for (std::size_t r0 = 0; r0 < K; r0 += 65536) {
        const std::size_t n = std::min<std::size_t>(65536, K - r0);
        rows(r0, n, x);
        hnsw->add(static_cast<faiss::Index::idx_t>(n), x.data());
      }
      hnsw->hnsw.efSearch = static_cast<int>(options.ef_search);
      a->impl_->index = std::move(hnsw);
    }
  } catch (const faiss::FaissException& e) {
    throw Error(std::string("ann: FAISS failed: ") + e.what());
  }
  store.check_intact();
  return a;
}

void AnnIndex::search(const float* q, std::size_t n, std::size_t k, std::int64_t* rows) const {
  ASSOCMEM_CHECK_ARG(k > 0, "ann: k must be > 0");
  std::vector<float> dist(n * k);
  std::vector<faiss::Index::idx_t> ids(n * k);
  try {
    if (options_.kind == "hnsw") {  // efSearch at least k, per call (the index itself is not changed)
      faiss::SearchParametersHNSW p;
      p.efSearch = static_cast<int>(std::max(options_.ef_search, k));
      impl_->index->search(static_cast<faiss::Index::idx_t>(n), q, static_cast<faiss::Index::idx_t>(k), dist.data(),
                           ids.data(), &p);
    } else {
      impl_->index->search(static_cast<faiss::Index::idx_t>(n), q, static_cast<faiss::Index::idx_t>(k), dist.data(),
                           ids.data());
    }
  } catch (const faiss::FaissException& e) {
    throw Error(std::string("ann: FAISS search failed: ") + e.what());
  }
  for (std::size_t i = 0; i < n * k; ++i) rows[i] = static_cast<std::int64_t>(ids[i]);
}

std::size_t AnnIndex::bytes() const {
  faiss::VectorIOWriter w;
  faiss::write_index(impl_->index.get(), &w);
  return w.data.size();
}

}  // namespace assocmem
