// Integrated Gradients chunk kernels on device memory (see kernels.h for the contract).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels.h"
#include "launch.cuh"

namespace xaisdk {
namespace cuda {
namespace {

__global__ void ig_fill_kernel(const float* __restrict__ x, const float* __restrict__ baseline,
                               const float* __restrict__ alphas, i64 D, i64 S, i64 start, i64 K, float* __restrict__ out) {
    for (i64 k = blockIdx.y; k < K; k += gridDim.y) {
        const i64 flat = start + k;
        const i64 n = flat / S;
        const float a = alphas[flat - n * S];
        const float* xr = x + n * D;
        const float* br = baseline + n * D;
        float* o = out + k * D;
        for (i64 d = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; d < D;
             d += static_cast<i64>(blockDim.x) * gridDim.x) {
            const float b = br[d];
            o[d] = __fadd_rn(b, __fmul_rn(a, __fsub_rn(xr[d], b)));
        }
    }
}

// y walks the samples n_first .. n_first + samples - 1 that the chunk touches; each thread owns one
// acc element and adds that sample's rows in increasing k.
__global__ void ig_accumulate_kernel(const float* __restrict__ grads, const float* __restrict__ weights, i64 D, i64 S,
                                     i64 start, i64 K, i64 n_first, i64 samples, float* __restrict__ acc) {
    for (i64 i = blockIdx.y; i < samples; i += gridDim.y) {
        const i64 n = n_first + i;
        const i64 k0 = imax(n * S, start) - start;
        const i64 k1 = imin((n + 1) * S, start + K) - start;
        float* a = acc + n * D;
        for (i64 d = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; d < D;
             d += static_cast<i64>(blockDim.x) * gridDim.x) {
            float sum = a[d];
            for (i64 k = k0; k < k1; ++k) sum = __fadd_rn(sum, __fmul_rn(weights[start + k - n * S], grads[k * D + d]));
            a[d] = sum;
        }
    }
}

__global__ void ig_finalize_kernel(float* __restrict__ acc, const float* __restrict__ x, const float* __restrict__ baseline,
                                   i64 total) {
    for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
         i += static_cast<i64>(blockDim.x) * gridDim.x) {
        acc[i] = __fmul_rn(acc[i], __fsub_rn(x[i], baseline[i]));
    }
}

}  // namespace

int ig_fill_chunk(const float* x, const float* baseline, const float* alphas, i64 N, i64 D, i64 S, i64 start, i64 K,
                  float* out, void* stream) {
    (void)N;
    if (K <= 0 || D <= 0) return 0;
    ig_fill_kernel<<<row_grid(K, D), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(x, baseline, alphas, D, S, start, K,
                                                                                        out);
    return launch_status();
}

int ig_accumulate_chunk(const float* grads, const float* weights, i64 N, i64 D, i64 S, i64 start, i64 K, float* acc,
                        void* stream) {
    (void)N;
    if (K <= 0 || D <= 0) return 0;
    const i64 n_first = start / S;
    const i64 samples = (start + K - 1) / S - n_first + 1;
    ig_accumulate_kernel<<<row_grid(samples, D), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        grads, weights, D, S, start, K, n_first, samples, acc);
    return launch_status();
}

int ig_finalize(float* acc, const float* x, const float* baseline, i64 N, i64 D, void* stream) {
    const i64 total = N * D;
    if (total <= 0) return 0;
    const i64 blocks = std::min<i64>((total + kThreads - 1) / kThreads, kMaxGridX * 16);
    ig_finalize_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(acc, x, baseline,
                                                                                                         total);
    return launch_status();
}

}  // namespace cuda
}  // namespace xaisdk
