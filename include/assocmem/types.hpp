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

}  // namespace assocmem
