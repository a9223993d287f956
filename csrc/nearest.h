// Nearest reference row by squared L2 distance (the MDTS baseline: the training image of the target
// class closest to each input), without ever holding the (Q, R) distance matrix.
//
// d(q, r) = ||q||^2 + ||r||^2 - 2 q.r, clamped at 0. The products q.r run in a packed, register-blocked
// SGEMM-style micro-kernel (AVX-512, AVX2/FMA or portable C++, chosen at run time), and each tile of
// distances goes straight from registers into a running per-query minimum. Norms are summed in float64,
// products in float32. Ties go to the lowest reference index.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

namespace xaisdk {
namespace nearest {

// Instruction sets a micro-kernel exists for. "auto" picks the fastest one this CPU runs.
enum class Isa { kScalar, kAvx2, kAvx512 };

const char* isa_name(Isa isa);
bool isa_supported(Isa isa);
Isa best_isa();
// Names of the supported instruction sets, fastest first (always ends with "scalar").
std::vector<std::string> supported_isas();

// Raw kernel on C-contiguous float32 buffers; arguments must already be valid: Q >= 0, R >= 1,
// D >= 1, block_q >= 1, block_r >= 1, finite values whose squared norms qn (Q,) and rn (R,) (computed
// by the caller, e.g. with squared_norms) keep max(qn) + max(rn) well inside the float32 range.
// Writes index (Q,) and the clamped squared distance (Q,).
void nearest_l2(const float* queries, const float* refs, const float* qn, const float* rn, std::int64_t Q,
                std::int64_t R, std::int64_t D, std::int64_t block_q, std::int64_t block_r, Isa isa,
                std::int64_t* index, float* distance);

// out[i] = sum_k rows[i, k]^2 summed in float64 (then rounded to float32); returns false if a row
// holds NaN or infinity (its out is then NaN or inf).
bool squared_norms(const float* rows, std::int64_t N, std::int64_t D, float* out);

}  // namespace nearest

// Adds nearest_l2 and nearest_l2_isas (checked, GIL released) to `m`.
void register_nearest(pybind11::module_& m);

}  // namespace xaisdk
