// Measures what the device can do, for the GPU benchmark (tests/cuda_bench.rs): its f32 FMA
// throughput, the yardstick for the head's large-batch kernel.
#include "common.cuh"

// Eight independent FMA chains per thread, `iters` rounds: 16 * iters flops per thread. The
// result is written so the compiler keeps the work; `iters` is a run-time value so it cannot
// fold it.
// Launch: any 1-D grid; out holds one value per thread.
extern "C" __global__ void fma_peak_f32(float* __restrict__ out, u32 iters) {
    const float m = 0.9999f;
    const float k = 1e-4f;
    float a0 = threadIdx.x * 1e-6f, a1 = a0 + 1.0f, a2 = a0 + 2.0f, a3 = a0 + 3.0f;
    float a4 = a0 + 4.0f, a5 = a0 + 5.0f, a6 = a0 + 6.0f, a7 = a0 + 7.0f;
    for (u32 i = 0; i < iters; i++) {
        a0 = fmaf(a0, m, k);
        a1 = fmaf(a1, m, k);
        a2 = fmaf(a2, m, k);
        a3 = fmaf(a3, m, k);
        a4 = fmaf(a4, m, k);
        a5 = fmaf(a5, m, k);
        a6 = fmaf(a6, m, k);
        a7 = fmaf(a7, m, k);
    }
    out[lethe_global_index()] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}
