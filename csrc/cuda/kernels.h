// Host-side interface of the CUDA kernels of xaisdk._ext_cuda.
//
// Everything here is plain C++ (no CUDA headers), so module_cuda.cpp compiles with the ordinary C++
// compiler; the definitions live in the .cu files, compiled by nvcc. Launchers enqueue work on
// `stream` (a cudaStream_t; nullptr is the legacy default stream) and return the cudaError_t of the
// launch as an int (0 = cudaSuccess). They assume checked arguments: the checks live in module_cuda.cpp.
//
// Semantics are those of the CPU kernels of the same name (csrc/ig.h, csrc/perturb.h): the (sample,
// step) pairs are numbered flat = n * S + s, and chunk row k is flat index start + k. Arithmetic uses
// the round-to-nearest intrinsics (__fadd_rn, __fmul_rn, ...), which nvcc never contracts into fused
// multiply-adds, so every value is rounded exactly as by the CPU kernels.
#pragma once

#include <cstdint>
#include <string>

namespace xaisdk {
namespace cuda {

using i64 = std::int64_t;

// out[k] = baseline[n] + alphas[s] * (x[n] - baseline[n]); x, baseline (N, D), alphas (S,), out (K, D).
int ig_fill_chunk(const float* x, const float* baseline, const float* alphas, i64 N, i64 D, i64 S, i64 start, i64 K,
                  float* out, void* stream);

// acc[n] += weights[s] * grads[k]. One thread per (n, d) adds the chunk's rows of sample n in
// increasing k, so the result is deterministic and independent of the chunking.
int ig_accumulate_chunk(const float* grads, const float* weights, i64 N, i64 D, i64 S, i64 start, i64 K, float* acc,
                        void* stream);

// acc *= x - baseline over N * D values.
int ig_finalize(float* acc, const float* x, const float* baseline, i64 N, i64 D, void* stream);

// Row k (flat = start + k, n = flat / J, j = flat % J) of out (K, C, P) is base[n] with, in every
// channel, the pixels order[n, lo[n, j]:hi[n, j]] taken from substrate[n]. The indices live in device
// memory and cannot be checked on the host: the kernel clamps lo and hi to 0 <= lo <= hi <= P and
// skips order entries outside [0, P), so bad indices never write out of bounds.
int perturb_fill_chunk(const float* base, const float* substrate, const i64* order, const i64* lo, const i64* hi, i64 N,
                       i64 C, i64 P, i64 J, i64 start, i64 K, float* out, void* stream);

// Runtime queries (runtime.cu). Each returns a cudaError_t as an int.
enum class MemoryKind { unregistered, host, device, managed };
int device_count(int* count);
int pointer_info(const void* ptr, MemoryKind* kind, int* device);
int get_device(int* device);
int set_device(int device);
// Clears the runtime's last-error state (after a failed query that the caller has handled).
void clear_last_error();
const char* error_name(int code);
const char* error_string(int code);

// "nvcc 13.0.88, CUDA runtime 13000 (static), driver 12080" and the like; never fails.
std::string toolchain_info();

}  // namespace cuda
}  // namespace xaisdk
