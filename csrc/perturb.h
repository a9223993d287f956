// Perturbation kernels: saliency ranking and the batches of progressively perturbed inputs that
// perturbation curves (pixel flipping, AOPC, deletion/insertion, AOSPC) and single-feature metrics
// (faithfulness, monotonicity) evaluate.
//
// Images are (N, C, P) with P pixels per channel; a "feature" is a pixel position, replaced in all
// channels at once. Row (n, j) of a run, numbered flat = n * J + j, is base[n] with the pixels
// order[n, lo[n, j]:hi[n, j]] taken from substrate[n]. Cumulative curves use lo = 0 and growing hi;
// single-feature metrics use hi = lo + 1.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

namespace xaisdk {
namespace perturb {

// order[n] = indices of saliency[n] (N, P) by descending value; equal values keep increasing index
// order (the same as numpy.argsort(-saliency, axis=1, kind="stable")). Values must not be NaN.
void descending_order(const float* saliency, std::int64_t N, std::int64_t P, std::int64_t* order);

// Writes rows start .. start + K - 1 of the flat (n, j) range into out (K, C, P). Indices must
// already be valid: 0 <= lo <= hi <= P, order[n] a permutation (or at least in [0, P)).
void fill_chunk(const float* base, const float* substrate, const std::int64_t* order, const std::int64_t* lo,
                const std::int64_t* hi, std::int64_t N, std::int64_t C, std::int64_t P, std::int64_t J, std::int64_t start,
                std::int64_t K, float* out);

}  // namespace perturb

// Adds perturb_order and perturb_fill_chunk (checked, GIL released) to `m`.
void register_perturb(pybind11::module_& m);

}  // namespace xaisdk
