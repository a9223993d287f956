#include "ig.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "common.h"

namespace xaisdk {
namespace ig {

using i64 = std::int64_t;

void fill_chunk(const float* x, const float* baseline, const float* alphas, i64 N, i64 D, i64 S, i64 start, i64 K,
                float* out) {
    (void)N;
    if (K <= 0 || D <= 0) return;
    const i64 block = column_block(K, D);
    const i64 blocks = (D + block - 1) / block;
    const i64 tasks = K * blocks;
#ifdef XAISDK_HAVE_OPENMP
#pragma omp parallel for schedule(static) if (K * D >= kParallelMinWork)
#endif
    for (i64 t = 0; t < tasks; ++t) {
        const i64 k = t / blocks;
        const i64 d0 = (t % blocks) * block;
        const i64 d1 = std::min(d0 + block, D);
        const i64 flat = start + k;
        const i64 n = flat / S;
        const float a = alphas[flat % S];
        const float* xr = x + n * D;
        const float* br = baseline + n * D;
        float* o = out + k * D;
        for (i64 d = d0; d < d1; ++d) o[d] = br[d] + a * (xr[d] - br[d]);
    }
}

void accumulate_chunk(const float* grads, const float* weights, i64 N, i64 D, i64 S, i64 start, i64 K, float* acc) {
    (void)N;
    if (K <= 0 || D <= 0) return;
    // Tasks are (sample, column block) pairs: each acc element belongs to one task, which adds the
    // chunk's rows for that sample in order. Splitting rows of one sample across threads would make
    // the float32 sum order depend on the thread count.
    const i64 n_first = start / S;
    const i64 n_last = (start + K - 1) / S;
    const i64 samples = n_last - n_first + 1;
    const i64 block = column_block(samples, D);
    const i64 blocks = (D + block - 1) / block;
    const i64 tasks = samples * blocks;
#ifdef XAISDK_HAVE_OPENMP
#pragma omp parallel for schedule(static) if (K * D >= kParallelMinWork)
#endif
    for (i64 t = 0; t < tasks; ++t) {
        const i64 n = n_first + t / blocks;
        const i64 d0 = (t % blocks) * block;
        const i64 d1 = std::min(d0 + block, D);
        const i64 k0 = std::max(n * S, start) - start;
        const i64 k1 = std::min((n + 1) * S, start + K) - start;
        float* a = acc + n * D;
        for (i64 k = k0; k < k1; ++k) {
            const float w = weights[start + k - n * S];
            const float* g = grads + k * D;
            for (i64 d = d0; d < d1; ++d) a[d] += w * g[d];
        }
    }
}

void finalize(float* acc, const float* x, const float* baseline, i64 N, i64 D) {
    const i64 total = N * D;
#ifdef XAISDK_HAVE_OPENMP
#pragma omp parallel for schedule(static) if (total >= kParallelMinWork)
#endif
    for (i64 i = 0; i < total; ++i) acc[i] *= x[i] - baseline[i];
}

}  // namespace ig

namespace {

using i64 = std::int64_t;

// N * S as i64, refusing products that would overflow the flat index.
i64 flat_count(i64 N, i64 S, const char* fn) {
    if (N > 0 && S > std::numeric_limits<i64>::max() / N) {
        throw std::invalid_argument(std::string(fn) + ": N * S = " + std::to_string(N) + " * " + std::to_string(S) +
                                    " overflows a 64-bit index");
    }
    return N * S;
}

void check_rows(i64 start, i64 K, i64 N, i64 S, const char* fn, const char* rows_name) {
    const i64 total = flat_count(N, S, fn);
    if (start < 0) {
        throw std::invalid_argument(std::string(fn) + ": start must be >= 0, got " + std::to_string(start));
    }
    if (start > total || K > total - start) {
        throw std::invalid_argument(std::string(fn) + ": rows " + std::to_string(start) + ".." +
                                    std::to_string(start + K - 1) + " of " + rows_name +
                                    " run past the N * S = " + std::to_string(N) + " * " + std::to_string(S) + " = " +
                                    std::to_string(total) + " (sample, step) pairs");
    }
}

void py_fill_chunk(const py::array& x, const py::array& baseline, const py::array& alphas, i64 start,
                   const py::array& out) {
    const char* fn = "ig_fill_chunk";
    require_f32(x, fn, "x", 2);
    require_f32(baseline, fn, "baseline", 2);
    require_f32(alphas, fn, "alphas", 1);
    require_f32(out, fn, "out", 2, /*writeable=*/true);
    const i64 N = x.shape(0), D = x.shape(1), S = alphas.shape(0), K = out.shape(0);
    if (baseline.shape(0) != N || baseline.shape(1) != D) {
        throw std::invalid_argument(std::string(fn) + ": baseline has shape " + shape_str(baseline) +
                                    ", expected the shape of x " + shape_str(x));
    }
    if (S == 0) throw std::invalid_argument(std::string(fn) + ": alphas is empty; need at least one path point");
    if (out.shape(1) != D) {
        throw std::invalid_argument(std::string(fn) + ": out has shape " + shape_str(out) + ", expected (K, " +
                                    std::to_string(D) + ") to match x " + shape_str(x));
    }
    check_rows(start, K, N, S, fn, "out");
    require_no_overlap(out, "out", x, "x", fn);
    require_no_overlap(out, "out", baseline, "baseline", fn);
    require_no_overlap(out, "out", alphas, "alphas", fn);

    const auto* px = static_cast<const float*>(x.data());
    const auto* pb = static_cast<const float*>(baseline.data());
    const auto* pa = static_cast<const float*>(alphas.data());
    auto* po = static_cast<float*>(const_cast<void*>(out.data()));
    py::gil_scoped_release release;
    ig::fill_chunk(px, pb, pa, N, D, S, start, K, po);
}

void py_accumulate_chunk(const py::array& grads, const py::array& weights, i64 start, const py::array& acc) {
    const char* fn = "ig_accumulate_chunk";
    require_f32(grads, fn, "grads", 2);
    require_f32(weights, fn, "weights", 1);
    require_f32(acc, fn, "acc", 2, /*writeable=*/true);
    const i64 N = acc.shape(0), D = acc.shape(1), S = weights.shape(0), K = grads.shape(0);
    if (S == 0) throw std::invalid_argument(std::string(fn) + ": weights is empty; need at least one path point");
    if (grads.shape(1) != D) {
        throw std::invalid_argument(std::string(fn) + ": grads has shape " + shape_str(grads) + ", expected (K, " +
                                    std::to_string(D) + ") to match acc " + shape_str(acc));
    }
    check_rows(start, K, N, S, fn, "grads");
    require_no_overlap(acc, "acc", grads, "grads", fn);
    require_no_overlap(acc, "acc", weights, "weights", fn);

    const auto* pg = static_cast<const float*>(grads.data());
    const auto* pw = static_cast<const float*>(weights.data());
    auto* pacc = static_cast<float*>(const_cast<void*>(acc.data()));
    py::gil_scoped_release release;
    ig::accumulate_chunk(pg, pw, N, D, S, start, K, pacc);
}

void py_finalize(const py::array& acc, const py::array& x, const py::array& baseline) {
    const char* fn = "ig_finalize";
    require_f32(acc, fn, "acc", 2, /*writeable=*/true);
    require_f32(x, fn, "x", 2);
    require_f32(baseline, fn, "baseline", 2);
    for (const py::array* a : {&x, &baseline}) {
        if (a->shape(0) != acc.shape(0) || a->shape(1) != acc.shape(1)) {
            throw std::invalid_argument(std::string(fn) + ": " + (a == &x ? "x" : "baseline") + " has shape " +
                                        shape_str(*a) + ", expected the shape of acc " + shape_str(acc));
        }
    }
    require_no_overlap(acc, "acc", x, "x", fn);
    require_no_overlap(acc, "acc", baseline, "baseline", fn);

    auto* pacc = static_cast<float*>(const_cast<void*>(acc.data()));
    const auto* px = static_cast<const float*>(x.data());
    const auto* pb = static_cast<const float*>(baseline.data());
    const i64 N = acc.shape(0), D = acc.shape(1);
    py::gil_scoped_release release;
    ig::finalize(pacc, px, pb, N, D);
}

}  // namespace

void register_ig(py::module_& m) {
    using namespace pybind11::literals;
    m.def("ig_fill_chunk", &py_fill_chunk, "x"_a, "baseline"_a, "alphas"_a, "start"_a, "out"_a,
          R"doc(Write one chunk of Integrated Gradients path points into ``out`` (in place).

For k in range(K), with flat = start + k, n = flat // S and s = flat % S (S = len(alphas)):
``out[k] = baseline[n] + alphas[s] * (x[n] - baseline[n])``.

x, baseline: float32 (N, D); alphas: float32 (S,); out: writeable float32 (K, D), all C-contiguous.
Raises ValueError on wrong dtype/shape/layout, start < 0, start + K > N * S, or ``out`` sharing
memory with an input.)doc");
    m.def("ig_accumulate_chunk", &py_accumulate_chunk, "grads"_a, "weights"_a, "start"_a, "acc"_a,
          R"doc(Add one chunk of weighted gradients into ``acc`` (in place).

For k in range(K), with flat = start + k, n = flat // S and s = flat % S (S = len(weights)):
``acc[n] += weights[s] * grads[k]``, summed in increasing k for every element, so the result is the
same for any thread count and any chunking of the flat range.

grads: float32 (K, D); weights: float32 (S,); acc: writeable float32 (N, D), all C-contiguous.)doc");
    m.def("ig_finalize", &py_finalize, "acc"_a, "x"_a, "baseline"_a,
          R"doc(Multiply the accumulated gradients by the path direction in place: ``acc *= x - baseline``.

acc: writeable float32 (N, D); x, baseline: float32 (N, D), all C-contiguous.)doc");
}

}  // namespace xaisdk
