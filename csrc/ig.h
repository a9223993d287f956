// Integrated Gradients chunk kernels.
//
// The (sample, step) pairs of an IG run are numbered flat = n * S + s (n < N samples, s < S path
// points) and processed in chunks of consecutive flat indices: chunk row k is flat index start + k.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

namespace xaisdk {
namespace ig {

// Raw kernels on C-contiguous float32 buffers; arguments must already be valid
// (0 <= start, start + K <= N * S). x, baseline, acc: (N, D); alphas, weights: (S,);
// out, grads: (K, D).

// out[k] = baseline[n] + alphas[s] * (x[n] - baseline[n]).
void fill_chunk(const float* x, const float* baseline, const float* alphas, std::int64_t N, std::int64_t D,
                std::int64_t S, std::int64_t start, std::int64_t K, float* out);

// acc[n] += weights[s] * grads[k], adding the rows of one sample in increasing k, so the result
// does not depend on the thread count or on how the flat range is cut into chunks.
void accumulate_chunk(const float* grads, const float* weights, std::int64_t N, std::int64_t D, std::int64_t S,
                      std::int64_t start, std::int64_t K, float* acc);

// acc *= (x - baseline), elementwise over N * D values.
void finalize(float* acc, const float* x, const float* baseline, std::int64_t N, std::int64_t D);

}  // namespace ig

// Adds ig_fill_chunk, ig_accumulate_chunk and ig_finalize (checked, GIL released) to `m`.
void register_ig(pybind11::module_& m);

}  // namespace xaisdk
