// CUDA runtime queries behind kernels.h, so that module_cuda.cpp needs no CUDA headers.
#include <cuda_runtime.h>

#include <string>

#include "kernels.h"

namespace xaisdk {
namespace cuda {

int device_count(int* count) {
    *count = 0;
    const cudaError_t err = cudaGetDeviceCount(count);
    if (err != cudaSuccess) *count = 0;
    return static_cast<int>(err);
}

int pointer_info(const void* ptr, MemoryKind* kind, int* device) {
    cudaPointerAttributes attr{};
    const cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
    if (err != cudaSuccess) return static_cast<int>(err);
    switch (attr.type) {
        case cudaMemoryTypeDevice: *kind = MemoryKind::device; break;
        case cudaMemoryTypeManaged: *kind = MemoryKind::managed; break;
        case cudaMemoryTypeHost: *kind = MemoryKind::host; break;
        default: *kind = MemoryKind::unregistered; break;
    }
    *device = attr.device;
    return 0;
}

int get_device(int* device) { return static_cast<int>(cudaGetDevice(device)); }

int set_device(int device) { return static_cast<int>(cudaSetDevice(device)); }

void clear_last_error() { (void)cudaGetLastError(); }

const char* error_name(int code) { return cudaGetErrorName(static_cast<cudaError_t>(code)); }

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

#define XAISDK_STR2(...) #__VA_ARGS__
#define XAISDK_STR(...) XAISDK_STR2(__VA_ARGS__)

std::string toolchain_info() {
    std::string info = "nvcc " XAISDK_STR(__CUDACC_VER_MAJOR__) "." XAISDK_STR(__CUDACC_VER_MINOR__) "." XAISDK_STR(
        __CUDACC_VER_BUILD__);
#ifdef __CUDA_ARCH_LIST__
    info += ", device code for compute capabilities " XAISDK_STR(__CUDA_ARCH_LIST__);
#endif
    info += ", CUDA runtime " + std::to_string(CUDART_VERSION) + " (linked statically)";
    int driver = 0;
    if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
    info += driver > 0 ? ", driver supports CUDA " + std::to_string(driver / 1000) + "." + std::to_string(driver % 1000 / 10)
                       : ", no CUDA driver";
    return info;
}

}  // namespace cuda
}  // namespace xaisdk
