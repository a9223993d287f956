// Helpers shared by the kernels of xaisdk._ext: argument checks for numpy arrays and OpenMP sizing.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#ifdef XAISDK_HAVE_OPENMP
#include <omp.h>
#endif

namespace xaisdk {

namespace py = pybind11;

// Below this many floats touched, a kernel runs serially: an OpenMP fork/join costs a few
// microseconds, more than the work itself.
constexpr std::int64_t kParallelMinWork = std::int64_t{1} << 15;

inline int max_threads() {
#ifdef XAISDK_HAVE_OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// Width (in floats) of the column blocks a kernel splits each row into, so that `rows` rows give
// about four tasks per thread. A multiple of 16 floats (one 64-byte cache line) keeps two threads
// from writing the same cache line. The split never changes results: every output element is
// computed by exactly one task, in the same order whatever the block width.
inline std::int64_t column_block(std::int64_t rows, std::int64_t cols) {
    const std::int64_t wanted_tasks = 4 * static_cast<std::int64_t>(max_threads());
    const std::int64_t blocks_per_row = std::max<std::int64_t>(1, (wanted_tasks + rows - 1) / std::max<std::int64_t>(rows, 1));
    std::int64_t block = (cols + blocks_per_row - 1) / blocks_per_row;
    block = (block + 15) / 16 * 16;
    return std::max<std::int64_t>(block, 16);
}

inline std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) {
        if (i > 0) s += ", ";
        s += std::to_string(a.shape(i));
    }
    if (a.ndim() == 1) s += ",";
    return s + ")";
}

// Throws std::invalid_argument (ValueError in Python) unless `a` is a C-contiguous float32 array
// with `ndim` dimensions, writeable when `writeable` is set. `fn` and `name` go into the message.
inline void require_f32(const py::array& a, const char* fn, const char* name, py::ssize_t ndim,
                        bool writeable = false) {
    const std::string where = std::string(fn) + ": " + name;
    if (!a.dtype().equal(py::dtype::of<float>())) {
        throw std::invalid_argument(where + " must be a float32 array, got dtype " +
                                    py::str(a.dtype()).cast<std::string>());
    }
    if (a.ndim() != ndim) {
        throw std::invalid_argument(where + " must have " + std::to_string(ndim) + " dimension" +
                                    (ndim == 1 ? "" : "s") + ", got shape " + shape_str(a));
    }
    if (!(a.flags() & py::array::c_style)) {
        throw std::invalid_argument(where + " must be C-contiguous (use numpy.ascontiguousarray)");
    }
    if (writeable && !a.writeable()) {
        throw std::invalid_argument(where + " is written in place and must be writeable");
    }
}

// Like require_f32 for int64 index arrays.
inline void require_i64(const py::array& a, const char* fn, const char* name, py::ssize_t ndim, bool writeable = false) {
    const std::string where = std::string(fn) + ": " + name;
    if (!a.dtype().equal(py::dtype::of<std::int64_t>())) {
        throw std::invalid_argument(where + " must be an int64 array, got dtype " + py::str(a.dtype()).cast<std::string>());
    }
    if (a.ndim() != ndim) {
        throw std::invalid_argument(where + " must have " + std::to_string(ndim) + " dimension" + (ndim == 1 ? "" : "s") +
                                    ", got shape " + shape_str(a));
    }
    if (!(a.flags() & py::array::c_style)) {
        throw std::invalid_argument(where + " must be C-contiguous (use numpy.ascontiguousarray)");
    }
    if (writeable && !a.writeable()) {
        throw std::invalid_argument(where + " is written in place and must be writeable");
    }
}

// True when the memory of `a` and `b` overlaps (both non-empty).
inline bool overlaps(const py::array& a, const py::array& b) {
    if (a.nbytes() == 0 || b.nbytes() == 0) return false;
    const auto pa = reinterpret_cast<std::uintptr_t>(a.data());
    const auto pb = reinterpret_cast<std::uintptr_t>(b.data());
    return pa < pb + static_cast<std::uintptr_t>(b.nbytes()) && pb < pa + static_cast<std::uintptr_t>(a.nbytes());
}

inline void require_no_overlap(const py::array& out, const char* out_name, const py::array& in,
                               const char* in_name, const char* fn) {
    if (overlaps(out, in)) {
        throw std::invalid_argument(std::string(fn) + ": " + out_name + " is written in place and must not share memory with " +
                                    in_name);
    }
}

}  // namespace xaisdk
