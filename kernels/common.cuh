// Helpers shared by Lethe's kernels. NVRTC receives this header by name ("common.cuh") from
// src/device/nvrtc.rs, so the kernels compile without a CUDA toolkit on the include path.
#pragma once

#define LETHE_WARP_SIZE 32
#define LETHE_FULL_MASK 0xffffffffu

typedef unsigned int u32;
typedef unsigned long long u64;

// The sum of `v` over the 32 lanes of a warp, in lane 0.
__device__ __forceinline__ float lethe_warp_sum(float v) {
#pragma unroll
    for (int offset = LETHE_WARP_SIZE / 2; offset > 0; offset >>= 1) {
        v += __shfl_down_sync(LETHE_FULL_MASK, v, offset);
    }
    return v;
}

// The global index of this thread in a 1-D grid, and the grid's stride, in 64 bits.
__device__ __forceinline__ u64 lethe_global_index() {
    return (u64)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ u64 lethe_grid_stride() {
    return (u64)gridDim.x * blockDim.x;
}

// The core's logit for sample `row` and head class `cls`, or 0.
//   z == nullptr:      the head has no core logits.
//   z_cols == nullptr: z is [n, z_width] already on the head's classes (z_width == C).
//   otherwise:         z is the core's raw logits [n, z_width]; head class cls takes column
//                      z_cols[cls], or nothing when that is negative (the mapping is fused here
//                      so that core logits on the device need no separate pass).
__device__ __forceinline__ float lethe_core_logit(const float* __restrict__ z,
                                                  const int* __restrict__ z_cols, u32 z_width,
                                                  u32 row, u32 cls) {
    if (z == nullptr) {
        return 0.0f;
    }
    int col = z_cols == nullptr ? (int)cls : z_cols[cls];
    return col < 0 ? 0.0f : z[(u64)row * z_width + (u32)col];
}
