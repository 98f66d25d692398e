//! Inference matmul `x @ W^T` for the short sequences of a control loop.
//!
//! With few rows (64 tokens), gemm's own threading splits the work poorly; measured here, each
//! thread taking its own block of output columns with a single-threaded gemm is 1.2-1.8x faster
//! for the 512 x 1376 / 512 x 512 projections of the benchmark Llama, and never slower for 256
//! rows.

use candle_core::{CpuStorage, Layout, Result, Shape};

/// Columns per block: a multiple of the AVX-512 f32 width so each block keeps full vectors.
const ALIGN: usize = 16;

pub struct ColumnSplitGemm;

impl candle_core::CustomOp2 for ColumnSplitGemm {
    fn name(&self) -> &'static str {
        "column-split-gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (s1, s2) else {
            candle_core::bail!("column-split-gemm: f32 only");
        };
        let (m, k) = l1.shape().dims2()?;
        let (k2, n) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("column-split-gemm: inner dims {k} vs {k2}");
        }
        let (Some((xs, xe)), Some((ws, we))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("column-split-gemm: operands must be contiguous");
        };
        let x = &x[xs..xe];
        let w = &w[ws..we];
        if k == 0 || m == 0 || n == 0 {
            return Ok((CpuStorage::F32(vec![0f32; m * n]), Shape::from((m, n))));
        }
        // gemm overwrites every element (read_dst is false), so the buffer need not be zeroed.
        let mut out = super::fastmath::uninit_buffer(m * n);
        let threads = rayon::current_num_threads().max(1);
        let blocks = threads.min(n / ALIGN).max(1);
        let per = n.div_ceil(blocks).div_ceil(ALIGN) * ALIGN;
        let (xp, wp, op) = (
            x.as_ptr() as usize,
            w.as_ptr() as usize,
            out.as_mut_ptr() as usize,
        );
        let run = |c0: usize| {
            let nb = per.min(n.saturating_sub(c0));
            if nb == 0 || m == 0 {
                return;
            }
            // SAFETY: every block writes a disjoint set of columns of `out`, reads `x` and `w`
            // within their bounds (row strides n and k, column offsets c0 + nb <= n), and all
            // three buffers outlive the scope below.
            unsafe {
                gemm::gemm(
                    m,
                    nb,
                    k,
                    (op as *mut f32).add(c0),
                    1,
                    n as isize,
                    false,
                    xp as *const f32,
                    1,
                    k as isize,
                    (wp as *const f32).add(c0),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        };
        let starts: Vec<usize> = (0..n).step_by(per.max(1)).collect();
        if starts.len() <= 1 {
            run(0);
        } else {
            rayon::scope(|s| {
                for &c0 in &starts[1..] {
                    s.spawn(move |_| run(c0));
                }
                run(starts[0]);
            });
        }
        // SAFETY: the column blocks cover all n columns of all m rows, each written by gemm.
        let out = unsafe { super::fastmath::assume_init(out) };
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}
