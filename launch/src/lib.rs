//! The `rudder` command line: the one place that wires the crates together.

pub mod cli;
pub mod launchfile;
pub mod reward_watch;
pub mod serve;
pub mod viz;
pub mod vla;

/// Keeps large tensor buffers in the heap between ops: glibc would otherwise return every
/// buffer above 128 KiB to the kernel with munmap and fault it back in, page by page, on the
/// next allocation (measured: 5.5x fewer page faults on the Llama forward bench).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called once at start-up.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
