#include "gini.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common.h"

namespace xaisdk {
namespace gini {

using i64 = std::int64_t;

void gini_rows(const float* values, i64 N, i64 n, double* out) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
#ifdef XAISDK_HAVE_OPENMP
#pragma omp parallel if (N * n >= kParallelMinWork && N > 1)
#endif
    {
        std::vector<float> c(static_cast<std::size_t>(n));
#ifdef XAISDK_HAVE_OPENMP
#pragma omp for schedule(dynamic, 4)
#endif
        for (i64 i = 0; i < N; ++i) {
            const float* row = values + i * n;
            bool finite = true;
            for (i64 k = 0; k < n; ++k) {
                c[k] = std::fabs(row[k]);
                finite = finite && std::isfinite(c[k]);
            }
            if (!finite) {
                out[i] = nan;
                continue;
            }
            std::sort(c.begin(), c.end());
            double weighted = 0.0, total = 0.0;
            for (i64 k = 0; k < n; ++k) {
                const double v = c[k];
                weighted += static_cast<double>(2 * (k + 1) - n - 1) * v;
                total += v;
            }
            out[i] = total > 0.0 ? weighted / (static_cast<double>(n) * total) : nan;
        }
    }
}

}  // namespace gini

namespace {

py::array_t<double> py_gini_rows(const py::array& values) {
    const char* fn = "gini_rows";
    require_f32(values, fn, "values", 2);
    const auto N = static_cast<std::int64_t>(values.shape(0));
    const auto n = static_cast<std::int64_t>(values.shape(1));
    py::array_t<double> out(N);
    const auto* pv = static_cast<const float*>(values.data());
    double* po = out.mutable_data();
    py::gil_scoped_release release;
    gini::gini_rows(pv, N, n, po);
    return out;
}

}  // namespace

void register_gini(py::module_& m) {
    using namespace pybind11::literals;
    m.def("gini_rows", &py_gini_rows, "values"_a,
          R"doc(Gini index of each row's absolute values: float64 (N,) for float32 (N, n) ``values``.

With c_1 <= ... <= c_n the sorted ``|values[i]|``: ``sum_k (2k - n - 1) c_k / (n * sum_k c_k)``
(Hurley & Rickard), summed in float64: 0 for a constant row, (n - 1) / n for a one-hot row. NaN for
an all-zero row, a row holding NaN or infinity, or n = 0 (as ``xaisdk.metrics.sparsity.gini_index``
gives). values must be C-contiguous float32 with 2 dimensions (ValueError otherwise). OpenMP over
rows, GIL released.)doc");
}

}  // namespace xaisdk
