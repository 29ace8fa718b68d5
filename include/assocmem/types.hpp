// assocmem/types.hpp - the numeric types of the plain (reference) implementation.
//
// The reference code works in double precision with Eigen. Memories are stored row by row:
// xi is N_h x N_f (row mu is memory mu), so one memory is contiguous.
#pragma once

#include <Eigen/Core>

namespace assocmem {

using Vector = Eigen::VectorXd;
using Matrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// The most worker threads any call accepts (threads = 0 means the CPUs the process may run on). Larger counts
/// are refused with InvalidArgument; a thread the system cannot start raises assocmem::Error after
/// the started ones are joined.
inline constexpr int kMaxThreads = 1024;

/// The inverse temperature (model B, the softmax Lagrangian, the fused attention) and the gain of
/// F = exp (models A, C) when none is given: the one place the default is written (the command line
/// and Python read it from here; assocmem._core.DEFAULT_BETA).
inline constexpr double kDefaultBeta = 1.0;

}  // namespace assocmem
