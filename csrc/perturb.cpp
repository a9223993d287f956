#include "perturb.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>

#include "common.h"

namespace xaisdk {
namespace perturb {

using i64 = std::int64_t;

void descending_order(const float* saliency, i64 N, i64 P, i64* order) {
#ifdef XAISDK_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) if (N * P >= kParallelMinWork && N > 1)
#endif
    for (i64 n = 0; n < N; ++n) {
        const float* s = saliency + n * P;
        i64* o = order + n * P;
        std::iota(o, o + P, i64{0});
        std::stable_sort(o, o + P, [s](i64 a, i64 b) { return s[a] > s[b]; });
    }
}

void fill_chunk(const float* base, const float* substrate, const i64* order, const i64* lo, const i64* hi, i64 N, i64 C,
                i64 P, i64 J, i64 start, i64 K, float* out) {
    (void)N;
    const i64 D = C * P;
    if (K <= 0 || D <= 0) return;
#ifdef XAISDK_HAVE_OPENMP
#pragma omp parallel for schedule(static) if (K * D >= kParallelMinWork)
#endif
    for (i64 k = 0; k < K; ++k) {
        const i64 flat = start + k;
        const i64 n = flat / J;
        const i64 j = flat % J;
        float* row = out + k * D;
        std::memcpy(row, base + n * D, sizeof(float) * static_cast<std::size_t>(D));
        const float* sub = substrate + n * D;
        const i64* ord = order + n * P;
        const i64 t0 = lo[n * J + j];
        const i64 t1 = hi[n * J + j];
        for (i64 c = 0; c < C; ++c) {
            float* rc = row + c * P;
            const float* sc = sub + c * P;
            for (i64 t = t0; t < t1; ++t) {
                const i64 p = ord[t];
                rc[p] = sc[p];
            }
        }
    }
}

}  // namespace perturb

namespace {

using i64 = std::int64_t;

py::array_t<i64> py_order(const py::array& saliency) {
    const char* fn = "perturb_order";
    require_f32(saliency, fn, "saliency", 2);
    const i64 N = saliency.shape(0), P = saliency.shape(1);
    const auto* ps = static_cast<const float*>(saliency.data());
    for (i64 i = 0; i < N * P; ++i) {
        if (ps[i] != ps[i]) throw std::invalid_argument(std::string(fn) + ": saliency contains NaN (no order is defined)");
    }
    py::array_t<i64> order({N, P});
    i64* po = order.mutable_data();
    {
        py::gil_scoped_release release;
        perturb::descending_order(ps, N, P, po);
    }
    return order;
}

void py_fill_chunk(const py::array& base, const py::array& substrate, const py::array& order, const py::array& lo,
                   const py::array& hi, i64 start, const py::array& out) {
    const char* fn = "perturb_fill_chunk";
    require_f32(base, fn, "base", 3);
    require_f32(substrate, fn, "substrate", 3);
    require_i64(order, fn, "order", 2);
    require_i64(lo, fn, "lo", 2);
    require_i64(hi, fn, "hi", 2);
    require_f32(out, fn, "out", 3, /*writeable=*/true);
    const i64 N = base.shape(0), C = base.shape(1), P = base.shape(2), J = lo.shape(1), K = out.shape(0);
    const std::string f(fn);
    if (substrate.shape(0) != N || substrate.shape(1) != C || substrate.shape(2) != P) {
        throw std::invalid_argument(f + ": substrate has shape " + shape_str(substrate) + ", expected the shape of base " +
                                    shape_str(base));
    }
    if (order.shape(0) != N || order.shape(1) != P) {
        throw std::invalid_argument(f + ": order has shape " + shape_str(order) + ", expected (" + std::to_string(N) + ", " +
                                    std::to_string(P) + ")");
    }
    if (lo.shape(0) != N || hi.shape(0) != N || hi.shape(1) != J) {
        throw std::invalid_argument(f + ": lo and hi must both be (N, J) with N = " + std::to_string(N) + ", got " +
                                    shape_str(lo) + " and " + shape_str(hi));
    }
    if (out.shape(1) != C || out.shape(2) != P) {
        throw std::invalid_argument(f + ": out has shape " + shape_str(out) + ", expected (K, " + std::to_string(C) + ", " +
                                    std::to_string(P) + ")");
    }
    if (J == 0) throw std::invalid_argument(f + ": lo and hi have no steps (J = 0)");
    if (N > 0 && J > std::numeric_limits<i64>::max() / N) throw std::invalid_argument(f + ": N * J overflows");
    const i64 total = N * J;
    if (start < 0 || start > total || K > total - start) {
        throw std::invalid_argument(f + ": rows " + std::to_string(start) + ".." + std::to_string(start + K - 1) +
                                    " run past the N * J = " + std::to_string(total) + " (sample, step) rows");
    }
    for (const py::array* in : {&base, &substrate, &order, &lo, &hi}) require_no_overlap(out, "out", *in, "an input", fn);

    const auto* pord = static_cast<const i64*>(order.data());
    const auto* plo = static_cast<const i64*>(lo.data());
    const auto* phi = static_cast<const i64*>(hi.data());
    // Check only what this chunk reads: its rows' bounds and the orders of its samples.
    for (i64 flat = start; flat < start + K; ++flat) {
        const i64 a = plo[flat], b = phi[flat];
        if (a < 0 || a > b || b > P) {
            throw std::invalid_argument(f + ": step " + std::to_string(flat % J) + " of sample " + std::to_string(flat / J) +
                                        " has lo = " + std::to_string(a) + ", hi = " + std::to_string(b) +
                                        "; need 0 <= lo <= hi <= P = " + std::to_string(P));
        }
    }
    if (K > 0) {
        for (i64 n = start / J; n <= (start + K - 1) / J; ++n) {
            for (i64 t = 0; t < P; ++t) {
                const i64 p = pord[n * P + t];
                if (p < 0 || p >= P) {
                    throw std::invalid_argument(f + ": order[" + std::to_string(n) + ", " + std::to_string(t) + "] = " +
                                                std::to_string(p) + " is not a pixel index in [0, " + std::to_string(P) + ")");
                }
            }
        }
    }
    const auto* pb = static_cast<const float*>(base.data());
    const auto* ps = static_cast<const float*>(substrate.data());
    auto* po = static_cast<float*>(const_cast<void*>(out.data()));
    py::gil_scoped_release release;
    perturb::fill_chunk(pb, ps, pord, plo, phi, N, C, P, J, start, K, po);
}

}  // namespace

void register_perturb(py::module_& m) {
    using namespace pybind11::literals;
    m.def("perturb_order", &py_order, "saliency"_a,
          R"doc(Per-row descending order of ``saliency`` (float32 (N, P), no NaN) as int64 (N, P).

Equal values keep increasing index order: the result equals
``numpy.argsort(-saliency, axis=1, kind="stable")``.)doc");
    m.def("perturb_fill_chunk", &py_fill_chunk, "base"_a, "substrate"_a, "order"_a, "lo"_a, "hi"_a, "start"_a, "out"_a,
          R"doc(Write one chunk of perturbed images into ``out`` (in place).

For k in range(K), with flat = start + k, n = flat // J and j = flat % J (J = lo.shape[1]):
``out[k] = base[n]`` with, in every channel, the pixels ``order[n, lo[n, j]:hi[n, j]]`` taken from
``substrate[n]``.

base, substrate: float32 (N, C, P); order: int64 (N, P); lo, hi: int64 (N, J); out: writeable
float32 (K, C, P); all C-contiguous. Raises ValueError on wrong dtype/shape/layout, rows past N * J,
bounds outside 0 <= lo <= hi <= P, order entries outside [0, P), or ``out`` sharing memory with an
input.)doc");
}

}  // namespace xaisdk
