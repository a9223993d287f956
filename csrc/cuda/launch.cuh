// Launch geometry shared by the kernels: a 2D grid whose y axis walks rows (stride gridDim.y) and
// whose x axis walks the columns of a row (stride blockDim.x * gridDim.x), so any (rows, cols) is
// covered without 32-bit overflow in the grid dimensions.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace xaisdk {
namespace cuda {

constexpr int kThreads = 256;
constexpr std::int64_t kMaxGridY = 65535;
// Enough x blocks to fill the GPU for wide rows; further columns are reached by the stride loop.
constexpr std::int64_t kMaxGridX = 4096;

inline dim3 row_grid(std::int64_t rows, std::int64_t cols) {
    const std::int64_t x = std::min<std::int64_t>(std::max<std::int64_t>((cols + kThreads - 1) / kThreads, 1), kMaxGridX);
    const std::int64_t y = std::min<std::int64_t>(std::max<std::int64_t>(rows, 1), kMaxGridY);
    return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y), 1);
}

// 64-bit min/max for device code (explicit, so no overload of the math library's float min/max can be picked).
__host__ __device__ inline std::int64_t imin(std::int64_t a, std::int64_t b) { return a < b ? a : b; }
__host__ __device__ inline std::int64_t imax(std::int64_t a, std::int64_t b) { return a > b ? a : b; }

// The error of the launch just made: configuration errors are reported by cudaGetLastError, which
// also clears them so that they do not leak into the next call.
inline int launch_status() { return static_cast<int>(cudaGetLastError()); }

}  // namespace cuda
}  // namespace xaisdk
