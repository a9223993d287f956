// xaisdk._ext_cuda: the CUDA kernels of kernels.h behind pybind11, on raw device pointers.
//
// Arrays are passed as device addresses (Python ints, e.g. tensor.data_ptr()) with their sizes, and
// work is enqueued on a caller-given stream (a cudaStream_t as an int; 0 = the legacy default
// stream), so a GPU loop never copies to the host. What the host can check is checked before any
// launch and refused with ValueError: sizes, row ranges, null or misaligned pointers, overlapping
// output, memory that is not on the device. Launch errors raise RuntimeError with the CUDA error.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels.h"

#ifndef XAISDK_CUDA_ARCHS
#define XAISDK_CUDA_ARCHS "unknown"
#endif

namespace py = pybind11;

namespace {

using i64 = std::int64_t;
namespace xc = xaisdk::cuda;

[[noreturn]] void fail(const std::string& fn, const std::string& what) { throw std::invalid_argument(fn + ": " + what); }

std::string hex(std::uintptr_t p) {
    static const char* digits = "0123456789abcdef";
    std::string s;
    do {
        s.insert(s.begin(), digits[p & 0xF]);
        p >>= 4;
    } while (p != 0);
    return "0x" + s;
}

std::string cuda_error(int code) { return std::string(xc::error_name(code)) + ": " + xc::error_string(code); }

// A Python int holding an address; anything else (a tensor, a float, a negative int) is refused.
std::uintptr_t as_address(const py::handle& value, const std::string& fn, const char* name) {
    if (!PyLong_Check(value.ptr())) {
        fail(fn, std::string(name) + " must be a device address as an int (e.g. tensor.data_ptr()), got " +
                     py::str(py::type::handle_of(value).attr("__name__")).cast<std::string>());
    }
    const unsigned long long v = PyLong_AsUnsignedLongLong(value.ptr());
    if (PyErr_Occurred()) {
        PyErr_Clear();
        fail(fn, std::string(name) + " must be a non-negative address below 2**64, got " + py::str(value).cast<std::string>());
    }
    return static_cast<std::uintptr_t>(v);
}

void require_nonnegative(const std::string& fn, std::initializer_list<std::pair<i64, const char*>> sizes) {
    for (const auto& [value, name] : sizes) {
        if (value < 0) fail(fn, std::string(name) + " must be >= 0, got " + std::to_string(value));
    }
}

i64 product(i64 a, i64 b, const std::string& fn, const char* what) {
    if (a > 0 && b > std::numeric_limits<i64>::max() / a) {
        fail(fn, std::string(what) + " = " + std::to_string(a) + " * " + std::to_string(b) + " overflows a 64-bit index");
    }
    return a * b;
}

void require_rows(i64 start, i64 K, i64 N, i64 steps, const std::string& fn, const char* steps_name) {
    const i64 total = product(N, steps, fn, (std::string("N * ") + steps_name).c_str());
    if (start > total || K > total - start) {
        fail(fn, "rows " + std::to_string(start) + ".." + std::to_string(start + K - 1) + " run past the N * " + steps_name +
                     " = " + std::to_string(N) + " * " + std::to_string(steps) + " = " + std::to_string(total) + " rows");
    }
}

// One device array argument: its address, element count and element size.
struct Buffer {
    const char* name;
    std::uintptr_t address;
    i64 count;
    i64 item;
    bool written;

    i64 bytes() const { return count * item; }
};

// Restores the runtime's current device when the launch had to switch to the buffers' device.
class DeviceGuard {
   public:
    DeviceGuard(int wanted, const std::string& fn) {
        if (const int err = xc::get_device(&previous_)) throw std::runtime_error(fn + ": cudaGetDevice failed: " + cuda_error(err));
        if (wanted != previous_) {
            if (const int err = xc::set_device(wanted)) {
                throw std::runtime_error(fn + ": cudaSetDevice(" + std::to_string(wanted) + ") failed: " + cuda_error(err));
            }
            switched_ = true;
        }
    }
    ~DeviceGuard() {
        if (switched_) xc::set_device(previous_);
    }
    DeviceGuard(const DeviceGuard&) = delete;
    DeviceGuard& operator=(const DeviceGuard&) = delete;

   private:
    int previous_ = 0;
    bool switched_ = false;
};

// Host-side checks that need no GPU (null, alignment, size overflow, overlap), then the ones that
// ask the driver (device memory, one device). Returns the device the buffers live on, or -1 when there
// is no work (`work` false): then nothing is launched and the driver is not consulted.
int check_buffers(const std::string& fn, bool work, std::initializer_list<Buffer> buffers) {
    std::vector<const Buffer*> used;
    for (const Buffer& b : buffers) {
        if (b.count == 0) continue;
        product(b.count, b.item, fn, (std::string(b.name) + " bytes").c_str());
        if (b.address == 0) fail(fn, std::string(b.name) + " is a null pointer but must hold " + std::to_string(b.count) + " values");
        if (b.address % static_cast<std::uintptr_t>(b.item) != 0) {
            fail(fn, std::string(b.name) + " = " + hex(b.address) + " is not aligned to its " + std::to_string(b.item) +
                         "-byte elements");
        }
        used.push_back(&b);
    }
    if (!work || used.empty()) return -1;
    for (const Buffer* w : used) {
        if (!w->written) continue;
        for (const Buffer* other : used) {
            if (other == w) continue;
            const auto wa = w->address, oa = other->address;
            const auto wb = static_cast<std::uintptr_t>(w->bytes()), ob = static_cast<std::uintptr_t>(other->bytes());
            if (wa < oa + ob && oa < wa + wb) {
                fail(fn, std::string(w->name) + " is written in place and must not share memory with " + other->name);
            }
        }
    }
    int device = -1;
    const char* device_of = nullptr;
    for (const Buffer* b : used) {
        xc::MemoryKind kind;
        int dev = -1;
        if (const int err = xc::pointer_info(reinterpret_cast<const void*>(b->address), &kind, &dev)) {
            xc::clear_last_error();
            throw std::runtime_error(fn + ": cannot inspect " + b->name + " (is CUDA available?): " + cuda_error(err));
        }
        if (kind == xc::MemoryKind::unregistered || kind == xc::MemoryKind::host) {
            fail(fn, std::string(b->name) + " = " + hex(b->address) + " is host memory; pass a device address (a CUDA " +
                         "tensor's data_ptr() or a cudaMalloc result)");
        }
        if (kind == xc::MemoryKind::managed) continue;  // reachable from every device
        if (device_of == nullptr) {
            device = dev;
            device_of = b->name;
        } else if (dev != device) {
            fail(fn, std::string(b->name) + " is on device " + std::to_string(dev) + " but " + device_of + " is on device " +
                         std::to_string(device));
        }
    }
    if (device < 0 && xc::get_device(&device) != 0) device = 0;  // only managed memory: stay on the current device
    return device;
}

template <class Launch>
void launch(const std::string& fn, int device, Launch&& run) {
    if (device < 0) return;  // nothing to do
    int err = 0;
    {
        DeviceGuard guard(device, fn);
        py::gil_scoped_release release;
        err = run();
    }
    if (err != 0) throw std::runtime_error(fn + ": CUDA kernel launch failed: " + cuda_error(err));
}

void* as_stream(const py::handle& stream, const std::string& fn) {
    return reinterpret_cast<void*>(as_address(stream, fn, "stream"));
}

void py_ig_fill_chunk(const py::object& x, const py::object& baseline, const py::object& alphas, i64 N, i64 D, i64 S, i64 start,
                      i64 K, const py::object& out, const py::object& stream) {
    const std::string fn = "ig_fill_chunk";
    require_nonnegative(fn, {{N, "N"}, {D, "D"}, {start, "start"}, {K, "K"}});
    if (S < 1) fail(fn, "S (path points) must be >= 1, got " + std::to_string(S));
    require_rows(start, K, N, S, fn, "S");
    const i64 nd = product(N, D, fn, "N * D"), kd = product(K, D, fn, "K * D");
    const int device = check_buffers(fn, K > 0 && D > 0, {{"x", as_address(x, fn, "x"), nd, 4, false},
                                          {"baseline", as_address(baseline, fn, "baseline"), nd, 4, false},
                                          {"alphas", as_address(alphas, fn, "alphas"), S, 4, false},
                                          {"out", as_address(out, fn, "out"), kd, 4, true}});
    const auto* px = reinterpret_cast<const float*>(as_address(x, fn, "x"));
    const auto* pb = reinterpret_cast<const float*>(as_address(baseline, fn, "baseline"));
    const auto* pa = reinterpret_cast<const float*>(as_address(alphas, fn, "alphas"));
    auto* po = reinterpret_cast<float*>(as_address(out, fn, "out"));
    void* s = as_stream(stream, fn);
    launch(fn, device, [&] { return xc::ig_fill_chunk(px, pb, pa, N, D, S, start, K, po, s); });
}

void py_ig_accumulate_chunk(const py::object& grads, const py::object& weights, i64 N, i64 D, i64 S, i64 start, i64 K,
                            const py::object& acc, const py::object& stream) {
    const std::string fn = "ig_accumulate_chunk";
    require_nonnegative(fn, {{N, "N"}, {D, "D"}, {start, "start"}, {K, "K"}});
    if (S < 1) fail(fn, "S (path points) must be >= 1, got " + std::to_string(S));
    require_rows(start, K, N, S, fn, "S");
    const i64 nd = product(N, D, fn, "N * D"), kd = product(K, D, fn, "K * D");
    const int device = check_buffers(fn, K > 0 && D > 0, {{"grads", as_address(grads, fn, "grads"), kd, 4, false},
                                          {"weights", as_address(weights, fn, "weights"), S, 4, false},
                                          {"acc", as_address(acc, fn, "acc"), nd, 4, true}});
    const auto* pg = reinterpret_cast<const float*>(as_address(grads, fn, "grads"));
    const auto* pw = reinterpret_cast<const float*>(as_address(weights, fn, "weights"));
    auto* pacc = reinterpret_cast<float*>(as_address(acc, fn, "acc"));
    void* s = as_stream(stream, fn);
    launch(fn, device, [&] { return xc::ig_accumulate_chunk(pg, pw, N, D, S, start, K, pacc, s); });
}

void py_ig_finalize(const py::object& acc, const py::object& x, const py::object& baseline, i64 N, i64 D,
                    const py::object& stream) {
    const std::string fn = "ig_finalize";
    require_nonnegative(fn, {{N, "N"}, {D, "D"}});
    const i64 nd = product(N, D, fn, "N * D");
    const int device = check_buffers(fn, nd > 0, {{"acc", as_address(acc, fn, "acc"), nd, 4, true},
                                          {"x", as_address(x, fn, "x"), nd, 4, false},
                                          {"baseline", as_address(baseline, fn, "baseline"), nd, 4, false}});
    auto* pacc = reinterpret_cast<float*>(as_address(acc, fn, "acc"));
    const auto* px = reinterpret_cast<const float*>(as_address(x, fn, "x"));
    const auto* pb = reinterpret_cast<const float*>(as_address(baseline, fn, "baseline"));
    void* s = as_stream(stream, fn);
    launch(fn, device, [&] { return xc::ig_finalize(pacc, px, pb, N, D, s); });
}

void py_perturb_fill_chunk(const py::object& base, const py::object& substrate, const py::object& order, const py::object& lo,
                           const py::object& hi, i64 N, i64 C, i64 P, i64 J, i64 start, i64 K, const py::object& out,
                           const py::object& stream) {
    const std::string fn = "perturb_fill_chunk";
    require_nonnegative(fn, {{N, "N"}, {C, "C"}, {P, "P"}, {start, "start"}, {K, "K"}});
    if (J < 1) fail(fn, "J (steps per sample) must be >= 1, got " + std::to_string(J));
    require_rows(start, K, N, J, fn, "J");
    const i64 d = product(C, P, fn, "C * P");
    const i64 nd = product(N, d, fn, "N * C * P"), kd = product(K, d, fn, "K * C * P");
    const i64 np = product(N, P, fn, "N * P"), nj = product(N, J, fn, "N * J");
    const int device = check_buffers(fn, kd > 0, {{"base", as_address(base, fn, "base"), nd, 4, false},
                                          {"substrate", as_address(substrate, fn, "substrate"), nd, 4, false},
                                          {"order", as_address(order, fn, "order"), np, 8, false},
                                          {"lo", as_address(lo, fn, "lo"), nj, 8, false},
                                          {"hi", as_address(hi, fn, "hi"), nj, 8, false},
                                          {"out", as_address(out, fn, "out"), kd, 4, true}});
    const auto* pb = reinterpret_cast<const float*>(as_address(base, fn, "base"));
    const auto* ps = reinterpret_cast<const float*>(as_address(substrate, fn, "substrate"));
    const auto* pord = reinterpret_cast<const i64*>(as_address(order, fn, "order"));
    const auto* plo = reinterpret_cast<const i64*>(as_address(lo, fn, "lo"));
    const auto* phi = reinterpret_cast<const i64*>(as_address(hi, fn, "hi"));
    auto* po = reinterpret_cast<float*>(as_address(out, fn, "out"));
    void* s = as_stream(stream, fn);
    launch(fn, device, [&] { return xc::perturb_fill_chunk(pb, ps, pord, plo, phi, N, C, P, J, start, K, po, s); });
}

int py_device_count() {
    int count = 0;
    if (xc::device_count(&count) != 0) {
        xc::clear_last_error();
        return 0;
    }
    return count;
}

std::string build_info() {
    return "xaisdk._ext_cuda: " + xc::toolchain_info() + ", archs " XAISDK_CUDA_ARCHS ", pybind11 " +
           std::to_string(PYBIND11_VERSION_MAJOR) + "." + std::to_string(PYBIND11_VERSION_MINOR) + "." +
           std::to_string(PYBIND11_VERSION_PATCH);
}

}  // namespace

PYBIND11_MODULE(_ext_cuda, m) {
    using namespace pybind11::literals;
    m.doc() = "CUDA kernels of xaisdk on raw device pointers (ints) with a stream; launches are asynchronous.";
    m.attr("ARCHS") = XAISDK_CUDA_ARCHS;

    m.def("device_count", &py_device_count,
          "CUDA devices this module's runtime sees; 0 when there is no driver or no GPU (never raises).");
    m.def("build_info", &build_info, "One line: nvcc version, compiled archs, CUDA runtime and driver versions.");
    m.def("ig_fill_chunk", &py_ig_fill_chunk, "x"_a, "baseline"_a, "alphas"_a, "N"_a, "D"_a, "S"_a, "start"_a, "K"_a, "out"_a,
          "stream"_a = 0,
          R"doc(Enqueue one chunk of Integrated Gradients path points into ``out`` (K, D) on ``stream``.

For k in range(K), with flat = start + k, n = flat // S, s = flat % S:
``out[k] = baseline[n] + alphas[s] * (x[n] - baseline[n])``. x, baseline: float32 (N, D); alphas:
float32 (S,); all device addresses of C-contiguous float32 buffers. ValueError for negative sizes,
S < 1, start + K > N * S, null, misaligned, overlapping or host addresses; RuntimeError for CUDA errors.)doc");
    m.def("ig_accumulate_chunk", &py_ig_accumulate_chunk, "grads"_a, "weights"_a, "N"_a, "D"_a, "S"_a, "start"_a, "K"_a, "acc"_a,
          "stream"_a = 0,
          R"doc(Enqueue ``acc[n] += weights[s] * grads[k]`` for the chunk's rows (grads (K, D), weights (S,), acc (N, D)).

Each acc element adds its sample's rows in increasing k: deterministic and the same for any chunking.)doc");
    m.def("ig_finalize", &py_ig_finalize, "acc"_a, "x"_a, "baseline"_a, "N"_a, "D"_a, "stream"_a = 0,
          "Enqueue ``acc *= x - baseline`` over (N, D) float32 device buffers.");
    m.def("perturb_fill_chunk", &py_perturb_fill_chunk, "base"_a, "substrate"_a, "order"_a, "lo"_a, "hi"_a, "N"_a, "C"_a, "P"_a,
          "J"_a, "start"_a, "K"_a, "out"_a, "stream"_a = 0,
          R"doc(Enqueue one chunk of perturbed images into ``out`` (K, C, P) on ``stream``.

For k in range(K), with flat = start + k, n = flat // J, j = flat % J: ``out[k] = base[n]`` with, in every
channel, the pixels ``order[n, lo[n, j]:hi[n, j]]`` taken from ``substrate[n]``. base, substrate: float32
(N, C, P); order: int64 (N, P); lo, hi: int64 (N, J). The indices are device data the host does not
read: the kernel clamps lo/hi into 0 <= lo <= hi <= P and skips order entries outside [0, P), so bad
indices never write out of bounds (check them beforehand for meaningful output).)doc");
}
