// Flip-batch construction on device memory (see kernels.h for the contract).
//
// Two launches on the same stream, which runs them in order: copy base[n] into every row, then
// overwrite the chosen pixels of each row from substrate[n]. Within a row the replaced pixels are
// distinct when order[n] is a permutation; if it is not, duplicate writes store the same value.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"
#include "launch.cuh"

namespace xaisdk {
namespace cuda {
namespace {

__global__ void copy_rows_kernel(const float* __restrict__ base, i64 D, i64 J, i64 start, i64 K, float* __restrict__ out) {
    for (i64 k = blockIdx.y; k < K; k += gridDim.y) {
        const float* src = base + ((start + k) / J) * D;
        float* dst = out + k * D;
        for (i64 d = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; d < D;
             d += static_cast<i64>(blockDim.x) * gridDim.x) {
            dst[d] = src[d];
        }
    }
}

// Thread i of row k handles replaced pixel t = lo + i / C in channel c = i % C.
__global__ void replace_pixels_kernel(const float* __restrict__ substrate, const i64* __restrict__ order,
                                      const i64* __restrict__ lo, const i64* __restrict__ hi, i64 C, i64 P, i64 J, i64 start,
                                      i64 K, float* __restrict__ out) {
    const i64 D = C * P;
    for (i64 k = blockIdx.y; k < K; k += gridDim.y) {
        const i64 flat = start + k;
        const i64 n = flat / J;
        const i64 t0 = imin(imax(lo[flat], 0), P);
        const i64 t1 = imin(imax(hi[flat], t0), P);
        const i64 count = (t1 - t0) * C;
        const i64* ord = order + n * P;
        const float* sub = substrate + n * D;
        float* row = out + k * D;
        for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
             i += static_cast<i64>(blockDim.x) * gridDim.x) {
            const i64 t = t0 + i / C;
            const i64 c = i - (i / C) * C;
            const i64 p = ord[t];
            if (p >= 0 && p < P) row[c * P + p] = sub[c * P + p];
        }
    }
}

}  // namespace

int perturb_fill_chunk(const float* base, const float* substrate, const i64* order, const i64* lo, const i64* hi, i64 N,
                       i64 C, i64 P, i64 J, i64 start, i64 K, float* out, void* stream) {
    (void)N;
    const i64 D = C * P;
    if (K <= 0 || D <= 0) return 0;
    auto s = static_cast<cudaStream_t>(stream);
    copy_rows_kernel<<<row_grid(K, D), kThreads, 0, s>>>(base, D, J, start, K, out);
    if (const int err = launch_status()) return err;
    replace_pixels_kernel<<<row_grid(K, D), kThreads, 0, s>>>(substrate, order, lo, hi, C, P, J, start, K, out);
    return launch_status();
}

}  // namespace cuda
}  // namespace xaisdk
