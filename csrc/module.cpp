// The one PYBIND11_MODULE of xaisdk._ext. Each kernel file declares a register_* function in its
// header; add a call for it here.
#include <pybind11/pybind11.h>

#include <string>

#include "common.h"
#include "gini.h"
#include "ig.h"
#include "nearest.h"
#include "perturb.h"
#include "relu_path.h"

namespace {

std::string build_info() {
    std::string info = "xaisdk._ext: C++" + std::to_string(__cplusplus / 100 % 100);
#if defined(__clang__)
    info += ", clang " __clang_version__;
#elif defined(__GNUC__)
    info += ", gcc " __VERSION__;
#elif defined(_MSC_VER)
    info += ", msvc " + std::to_string(_MSC_VER);
#endif
#ifdef XAISDK_HAVE_OPENMP
    info += ", OpenMP " + std::to_string(_OPENMP) + " (" + std::to_string(xaisdk::max_threads()) + " threads)";
#else
    info += ", no OpenMP";
#endif
    info += ", pybind11 " + std::to_string(PYBIND11_VERSION_MAJOR) + "." + std::to_string(PYBIND11_VERSION_MINOR) + "." +
            std::to_string(PYBIND11_VERSION_PATCH);
    return info;
}

}  // namespace

PYBIND11_MODULE(_ext, m) {
    m.doc() = "Compiled kernels of xaisdk (float32, C-contiguous numpy arrays; the GIL is released while they run).";

#ifdef XAISDK_HAVE_OPENMP
    m.attr("HAVE_OPENMP") = true;
#else
    m.attr("HAVE_OPENMP") = false;
#endif
    m.def("openmp_threads", &xaisdk::max_threads,
          "Threads an OpenMP loop of the extension would use now (omp_get_max_threads); 1 without OpenMP.");
    m.def("build_info", &build_info, "One line describing how the extension was compiled.");

    xaisdk::register_gini(m);
    xaisdk::register_ig(m);
    xaisdk::register_nearest(m);
    xaisdk::register_perturb(m);
    xaisdk::register_relu_path(m);
}
