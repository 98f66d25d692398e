//! The machine figures `rudder bench` reports beside its timings: how many threads the CPU
//! kernels run on and the f32 FMA ceiling they can approach. The kernels and their thread pool
//! are private to the crate; this is their only public face.

/// Threads a CPU kernel job runs on: the kernels' pool of spinning helpers and the calling
/// thread. Starts the pool if it is not running yet.
pub fn threads() -> usize {
    crate::kernels::spin_pool::threads()
}

/// The machine's f32 FMA throughput on `threads` threads, in GFLOP/s: independent AVX-512 FMA
/// chains with no memory traffic, the ceiling any f32 matmul here can approach. The best of
/// three 0.1 s rounds; `None` without AVX-512.
pub fn fma_peak_gflops(threads: usize) -> Option<f64> {
    crate::kernels::packed_gemm::fma_peak_gflops(threads)
}
