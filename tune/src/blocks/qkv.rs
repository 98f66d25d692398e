//! An attention's q, k and v projections as one packed-kernel pass, with the rotary embedding
//! applied in place, for CPU f32 inference.
//!
//! Three projections and two rotary passes were five parallel jobs per layer, each with its own
//! output buffer and its own wait for the slowest thread; between them the second thread sat
//! idle while the rotation ran on one. Here the three weights are packed side by side
//! (`[q | k | v]` columns), one job computes all three, and one more rotates q and k where they
//! lie. The attention kernel reads q, k and v through their strides, so nothing is copied out.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, TensorId};

use super::rope::RopeTables;
use crate::kernels::packed_gemm::{with_cpu_f32, PackedWeight};

/// q, k and v weights packed together, with the ids of the tensors they came from: a replaced
/// weight (a merged adapter) no longer matches, and the separate projections run instead.
#[derive(Debug, Clone)]
pub struct PackedQkv {
    ids: [TensorId; 3],
    weight: Arc<PackedWeight>,
    /// Output columns of q and of each of k and v.
    q: usize,
    kv: usize,
}

impl PackedQkv {
    /// Packs `[in, out]` (transposed) q, k and v weights side by side; `None` unless all three
    /// are contiguous CPU f32 matrices over the same input width, the CPU runs the packed
    /// kernel, and the packing budget allows.
    pub fn new(q: &Tensor, k: &Tensor, v: &Tensor) -> Option<Self> {
        let (kin, nq) = q.dims2().ok()?;
        let (kk, nk) = k.dims2().ok()?;
        let (kv_in, nv) = v.dims2().ok()?;
        if kk != kin || kv_in != kin || nk != nv {
            return None;
        }
        let n = nq + 2 * nk;
        let mut joined = Vec::with_capacity(kin * n);
        with_cpu_f32(q, |qd| {
            with_cpu_f32(k, |kd| {
                with_cpu_f32(v, |vd| {
                    for i in 0..kin {
                        joined.extend_from_slice(&qd[i * nq..(i + 1) * nq]);
                        joined.extend_from_slice(&kd[i * nk..(i + 1) * nk]);
                        joined.extend_from_slice(&vd[i * nk..(i + 1) * nk]);
                    }
                    Some(())
                })
            })
        })?;
        let weight = PackedWeight::new(&joined, kin, n)?;
        Some(Self {
            ids: [q.id(), k.id(), v.id()],
            weight: Arc::new(weight),
            q: nq,
            kv: nk,
        })
    }

    /// Whether this packing was made from exactly these weights.
    pub fn matches(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
        self.ids == [q.id(), k.id(), v.id()]
    }

    /// `x: [rows, in]` (contiguous) to `[rows, q + 2 kv]`: the three projections side by side,
    /// q and k rotated by `rope` (heads of `head_dim`) when given.
    pub fn forward(&self, x: &Tensor, head_dim: usize, rope: Option<RopeTables>) -> Result<Tensor> {
        x.apply_op1_no_bwd(&QkvRope {
            weight: self.weight.clone(),
            rotated: self.q + self.kv,
            head_dim,
            rope,
        })
    }
}

/// The packed projection and the in-place rotation of its first `rotated` columns.
struct QkvRope {
    weight: Arc<PackedWeight>,
    rotated: usize,
    head_dim: usize,
    rope: Option<RopeTables>,
}

impl CustomOp1 for QkvRope {
    fn name(&self) -> &'static str {
        "packed-qkv-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = s else {
            candle_core::bail!("packed-qkv: expected an f32 input");
        };
        let (m, k) = l.shape().dims2()?;
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("packed-qkv: input must be contiguous");
        };
        if k != self.weight.k() {
            candle_core::bail!(
                "packed-qkv: input has {k} features, the weights expect {}",
                self.weight.k()
            );
        }
        let n = self.weight.n();
        if let Some(rope) = &self.rope {
            let d = self.head_dim;
            if d == 0 || rope.half * 2 != d || !self.rotated.is_multiple_of(d) {
                candle_core::bail!("packed-qkv: rotary tables do not fit head_dim {d}");
            }
            if m % rope.t != 0 || (rope.batched && rope.cos.len() != m * rope.half) {
                candle_core::bail!(
                    "packed-qkv: {m} rows for rotary tables of {} positions",
                    rope.t
                );
            }
        }
        let mut out = crate::kernels::fastmath::uninit_buffer(m * n);
        // With heads that tile a panel (head_dim dividing 64) each task rotates its own block
        // of q and k right after computing it; otherwise a second pass rotates them.
        let in_task = self
            .rope
            .as_ref()
            .filter(|_| crate::kernels::packed_gemm::PANEL.is_multiple_of(self.head_dim));
        let rotate_block =
            |op: *mut f32, cols: std::ops::Range<usize>, rows: std::ops::Range<usize>| {
                let (Some(rope), true) = (in_task, cols.start < self.rotated) else {
                    return;
                };
                let end = cols.end.min(self.rotated);
                let heads = (end - cols.start) / self.head_dim;
                // SAFETY: `op` points at the m x n output; this task alone wrote (and now
                // rewrites) these columns of these rows.
                unsafe { rope.rotate_block(op.add(cols.start), n, rows, heads) };
            };
        self.weight.matmul_then(
            &data[a..b],
            m,
            None,
            &mut out,
            in_task.is_some().then_some(&rotate_block as _),
        )?;
        // SAFETY: the packed kernel writes every element of the m x n output.
        let mut out = unsafe { crate::kernels::fastmath::assume_init(out) };
        if let (Some(rope), None) = (&self.rope, in_task) {
            let heads = self.rotated / self.head_dim;
            let threads = crate::kernels::spin_pool::threads();
            // Small inputs (a decoding step) rotate on this thread: a job costs more.
            let tasks = if m * self.rotated < 1 << 14 {
                1
            } else {
                threads.min(m)
            };
            let op = out.as_mut_ptr() as usize;
            let rotate = |task: usize| {
                let (r0, r1) = (task * m / tasks, (task + 1) * m / tasks);
                // SAFETY: tasks own disjoint rows of `out` (m rows of n, the rotated heads
                // first), which outlives the job.
                unsafe { rope.rotate_block(op as *mut f32, n, r0..r1, heads) };
            };
            if !crate::kernels::spin_pool::run(tasks, &rotate) {
                (0..tasks).for_each(rotate);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}
