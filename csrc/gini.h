// Gini index of each row's absolute values (sparsity of attribution maps), Hurley & Rickard's form:
// with c_1 <= ... <= c_n the sorted |values|, G = sum_i (2i - n - 1) c_i / (n * sum_i c_i).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

namespace xaisdk {
namespace gini {

// out[i] = Gini index of |values[i, :]| (values: C-contiguous float32 (N, n)), summed in float64.
// NaN for a row that is all zeros, holds NaN or infinity, or has no values (n = 0).
void gini_rows(const float* values, std::int64_t N, std::int64_t n, double* out);

}  // namespace gini

// Adds gini_rows (checked, GIL released) to `m`.
void register_gini(pybind11::module_& m);

}  // namespace xaisdk
