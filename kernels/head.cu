// The head's forward pass, out = z + φ Wᵀ + b, and zeroing of weights for forget-all.
//
// Shapes (f32, row-major, contiguous): phi [n, d], w [C, d], b [C], out [n, C]; z as described
// at lethe_core_logit in common.cuh. Dimensions are 32-bit, offsets 64-bit.
//
// The reference is src/device/cpu.rs; tests/cuda_parity.rs compares the two.
#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// Small batches (the host uses this for n <= 16): bandwidth-bound on W.
// A warp computes one class for HEAD_GEMV_ROWS samples, so W is streamed from memory once per
// HEAD_GEMV_ROWS samples; phi rows are shared by every warp and stay in cache.
// Launch: block (32 * HEAD_GEMV_WARPS), grid (ceil(C / HEAD_GEMV_WARPS), ceil(n / HEAD_GEMV_ROWS)).
#define HEAD_GEMV_WARPS 4
#define HEAD_GEMV_ROWS 4

extern "C" __global__ void __launch_bounds__(LETHE_WARP_SIZE * HEAD_GEMV_WARPS)
head_forward_f32(const float* __restrict__ phi, const float* __restrict__ z,
                 const int* __restrict__ z_cols, u32 z_width, const float* __restrict__ w,
                 const float* __restrict__ b, float* __restrict__ out, u32 n, u32 d, u32 c) {
    const u32 lane = threadIdx.x % LETHE_WARP_SIZE;
    const u32 cls = blockIdx.x * HEAD_GEMV_WARPS + threadIdx.x / LETHE_WARP_SIZE;
    const u32 row0 = blockIdx.y * HEAD_GEMV_ROWS;
    // cls is the same on every lane of a warp, so whole warps leave together and the shuffles
    // below always see 32 lanes.
    if (cls >= c || row0 >= n) {
        return;
    }
    const u32 rows = min((u32)HEAD_GEMV_ROWS, n - row0);
    const float* w_row = w + (u64)cls * d;
    const float* phi_rows = phi + (u64)row0 * d;
    float acc[HEAD_GEMV_ROWS];
#pragma unroll
    for (u32 r = 0; r < HEAD_GEMV_ROWS; r++) {
        acc[r] = 0.0f;
    }
    // 16-byte loads when every row starts 16-byte aligned.
    const bool vector = (d % 4 == 0) && (((u64)w | (u64)phi) % 16 == 0);
    u32 tail = 0;
    if (vector) {
        const u32 d4 = d / 4;
        const float4* w4 = reinterpret_cast<const float4*>(w_row);
#pragma unroll 4
        for (u32 j = lane; j < d4; j += LETHE_WARP_SIZE) {
            const float4 wv = w4[j];
#pragma unroll
            for (u32 r = 0; r < HEAD_GEMV_ROWS; r++) {
                if (r < rows) {
                    const float4 pv = reinterpret_cast<const float4*>(phi_rows + (u64)r * d)[j];
                    acc[r] += wv.x * pv.x + wv.y * pv.y + wv.z * pv.z + wv.w * pv.w;
                }
            }
        }
        tail = d;
    }
#pragma unroll 4
    for (u32 j = tail + lane; j < d; j += LETHE_WARP_SIZE) {
        const float wv = w_row[j];
#pragma unroll
        for (u32 r = 0; r < HEAD_GEMV_ROWS; r++) {
            if (r < rows) {
                acc[r] += wv * phi_rows[(u64)r * d + j];
            }
        }
    }
#pragma unroll
    for (u32 r = 0; r < HEAD_GEMV_ROWS; r++) {
        const float sum = lethe_warp_sum(acc[r]);
        if (lane == 0 && r < rows) {
            const u32 row = row0 + r;
            out[(u64)row * c + cls] = lethe_core_logit(z, z_cols, z_width, row, cls) + sum + b[cls];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Large batches: compute-bound. A block computes a HEAD_TILE x HEAD_TILE tile of out (samples x
// classes) from HEAD_TILE_K-wide slices of phi and W staged in shared memory; each of its
// 16 x 16 threads accumulates a 4 x 4 sub-tile (strided by 16 so shared reads do not conflict).
// Launch: block 256, grid (ceil(n / HEAD_TILE), ceil(C / HEAD_TILE)).
#define HEAD_TILE 64
#define HEAD_TILE_K 16
#define HEAD_TILE_THREADS 256
#define HEAD_TILE_SUB 4

extern "C" __global__ void __launch_bounds__(HEAD_TILE_THREADS)
head_forward_tiled_f32(const float* __restrict__ phi, const float* __restrict__ z,
                       const int* __restrict__ z_cols, u32 z_width,
                       const float* __restrict__ w, const float* __restrict__ b,
                       float* __restrict__ out, u32 n, u32 d, u32 c) {
    // k-major tiles; the padding keeps the transposing stores from piling onto one bank.
    __shared__ float phi_tile[HEAD_TILE_K][HEAD_TILE + 1];
    __shared__ float w_tile[HEAD_TILE_K][HEAD_TILE + 1];
    const u32 tid = threadIdx.x;
    const u32 tx = tid % 16;  // class lane of the 4 x 4 sub-tile
    const u32 ty = tid / 16;  // sample lane
    const u32 row0 = blockIdx.x * HEAD_TILE;
    const u32 cls0 = blockIdx.y * HEAD_TILE;
    // Staging: each thread loads 4 values of each tile, HEAD_TILE_K consecutive k per 16 threads.
    const u32 load_k = tid % HEAD_TILE_K;
    const u32 load_r = tid / HEAD_TILE_K;
    float acc[HEAD_TILE_SUB][HEAD_TILE_SUB];
#pragma unroll
    for (u32 i = 0; i < HEAD_TILE_SUB; i++) {
#pragma unroll
        for (u32 j = 0; j < HEAD_TILE_SUB; j++) {
            acc[i][j] = 0.0f;
        }
    }
    for (u32 k0 = 0; k0 < d; k0 += HEAD_TILE_K) {
        const u32 k = k0 + load_k;
#pragma unroll
        for (u32 i = 0; i < HEAD_TILE_SUB; i++) {
            const u32 r = load_r + i * (HEAD_TILE_THREADS / HEAD_TILE_K);
            const u32 row = row0 + r;
            const u32 cls = cls0 + r;
            phi_tile[load_k][r] = (row < n && k < d) ? phi[(u64)row * d + k] : 0.0f;
            w_tile[load_k][r] = (cls < c && k < d) ? w[(u64)cls * d + k] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (u32 kk = 0; kk < HEAD_TILE_K; kk++) {
            float p[HEAD_TILE_SUB];
            float q[HEAD_TILE_SUB];
#pragma unroll
            for (u32 i = 0; i < HEAD_TILE_SUB; i++) {
                p[i] = phi_tile[kk][ty + 16 * i];
                q[i] = w_tile[kk][tx + 16 * i];
            }
#pragma unroll
            for (u32 i = 0; i < HEAD_TILE_SUB; i++) {
#pragma unroll
                for (u32 j = 0; j < HEAD_TILE_SUB; j++) {
                    acc[i][j] += p[i] * q[j];
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (u32 i = 0; i < HEAD_TILE_SUB; i++) {
        const u32 row = row0 + ty + 16 * i;
#pragma unroll
        for (u32 j = 0; j < HEAD_TILE_SUB; j++) {
            const u32 cls = cls0 + tx + 16 * j;
            if (row < n && cls < c) {
                out[(u64)row * c + cls] =
                    lethe_core_logit(z, z_cols, z_width, row, cls) + acc[i][j] + b[cls];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// forget-all: x[0..len) = 0 on the device, so no zeros cross the bus.
// Launch: any 1-D grid (grid-stride loop).
extern "C" __global__ void zero_f32(float* __restrict__ x, u64 len) {
    for (u64 i = lethe_global_index(); i < len; i += lethe_grid_stride()) {
        x[i] = 0.0f;
    }
}
