//! Scaled dot-product attention in one CPU pass for inference: per (batch, head) and block of
//! queries, `softmax(scale * Q K^T + mask) V`, written straight into the `[batch, seq, heads *
//! head_dim]` layout the output projection reads.
//!
//! Against the composition of candle ops it replaces (transposes to contiguous copies, a full
//! score tensor, a separate mask add and softmax, a transpose back) it reads Q, K and V through
//! their strides, never materialises more than one block of scores, skips the keys a block of
//! queries cannot see (a causal mask leaves about 3/8 of the score matrix unused at 256
//! tokens), and uses the vectorised softmax of [`super::fastmath`].

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor, TensorId};

use super::fastmath::{exp_shifted_row, softmax_row};

/// The additive-mask value of a hidden key: a large negative number instead of -inf so fully
/// masked rows (padding) give finite output. A row ends after its last entry above `NEG / 2`.
/// The public `blocks::attention::mask::NEG` is this value.
pub const NEG: f32 = f32::MIN;

/// Queries per block: a block computes scores only up to the last key any of its rows sees.
const QUERY_BLOCK: usize = 64;

/// Queries per block on the panel-kernel path: one register block of rows, so under a causal
/// mask each block stops at its own last key and little of the masked half is computed
/// (64-query blocks compute 5/8 of the full score matrix at 256 tokens; these about 9/16
/// with the panel padding of the scores, and exactly the triangle for `P V`).
const PACKED_QUERY_BLOCK: usize = 6;

/// An additive mask `[mask_batch, 1, q_len, k_len]` with `mask_batch` 1 or the batch, and
/// where each of its rows ends.
pub struct MaskRows {
    data: Vec<f32>,
    batch: usize,
    q_len: usize,
    k_len: usize,
    /// Per row, [`MaskRows::row_end`].
    ends: Vec<usize>,
    /// Per row, whether every value before its end is 0 (a causal row needs no add).
    plain: Vec<bool>,
}

impl MaskRows {
    pub fn new(data: Vec<f32>, batch: usize, q_len: usize, k_len: usize) -> Self {
        let ends: Vec<usize> = data
            .chunks(k_len.max(1))
            .take(batch * q_len)
            .map(|row| match row.iter().rposition(|&m| m > NEG / 2.0) {
                Some(i) => i + 1,
                None => k_len,
            })
            .collect();
        let plain = data
            .chunks(k_len.max(1))
            .zip(&ends)
            .map(|(row, &end)| row[..end.min(row.len())].iter().all(|&m| m == 0.0))
            .collect();
        Self {
            data,
            batch,
            q_len,
            k_len,
            ends,
            plain,
        }
    }

    /// The rows of a `[mask_batch, 1, q_len, k_len]` f32 mask tensor, read once per tensor:
    /// every layer of a forward pass gets the same mask, and copying it out per layer was a
    /// visible share of the attention's time.
    pub fn of_tensor(m: &Tensor, batch: usize, q_len: usize, k_len: usize) -> Result<Arc<Self>> {
        static LAST: Mutex<Option<(TensorId, Arc<MaskRows>)>> = Mutex::new(None);
        let id = m.id();
        if let Ok(last) = LAST.lock() {
            if let Some((lid, rows)) = last.as_ref() {
                let fits = rows.batch == batch && rows.q_len == q_len && rows.k_len == k_len;
                if *lid == id && fits {
                    return Ok(rows.clone());
                }
            }
        }
        let rows = Arc::new(Self::new(
            m.flatten_all()?.to_vec1::<f32>()?,
            batch,
            q_len,
            k_len,
        ));
        if let Ok(mut last) = LAST.lock() {
            *last = Some((id, rows.clone()));
        }
        Ok(rows)
    }

    fn row(&self, b: usize, q: usize) -> &[f32] {
        let b = if self.batch == 1 { 0 } else { b };
        let start = (b * self.q_len + q) * self.k_len;
        &self.data[start..start + self.k_len]
    }

    /// One past the last key row `q` may see; `k_len` for a fully masked row, whose output the
    /// unfused path makes the mean of every value.
    fn row_end(&self, b: usize, q: usize) -> usize {
        let b = if self.batch == 1 { 0 } else { b };
        self.ends[b * self.q_len + q]
    }

    /// The mask values row `q` must add before its end, `None` when they are all 0.
    fn live_row(&self, b: usize, q: usize, end: usize) -> Option<&[f32]> {
        let bm = if self.batch == 1 { 0 } else { b };
        if self.plain[bm * self.q_len + q] {
            None
        } else {
            Some(&self.row(b, q)[..end])
        }
    }
}

/// `q: [b, heads, t, d]`, `k`, `v: [b, kv_heads, s, d]`, any strides; output `[b, t, heads * d]`.
pub struct FusedAttention {
    pub scale: f32,
    pub mask: Option<Arc<MaskRows>>,
}

struct View4 {
    offset: usize,
    dims: [usize; 4],
    stride: [usize; 4],
}

fn view4<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<(&'a [f32], View4)> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("fused attention: {what} must be f32");
    };
    let dims: [usize; 4] = l
        .dims()
        .try_into()
        .map_err(|_| candle_core::Error::Msg(format!("fused attention: {what} must be 4-D")))?;
    let stride: [usize; 4] = l
        .stride()
        .try_into()
        .map_err(|_| candle_core::Error::Msg(format!("fused attention: {what} must be 4-D")))?;
    Ok((
        data,
        View4 {
            offset: l.start_offset(),
            dims,
            stride,
        },
    ))
}

impl View4 {
    fn at(&self, b: usize, h: usize, i: usize) -> usize {
        self.offset + b * self.stride[0] + h * self.stride[1] + i * self.stride[2]
    }
}

impl FusedAttention {
    /// Per batch row and query block, one past the last key any query of the block sees.
    fn block_ends(&self, b: usize, t: usize, s: usize) -> Vec<usize> {
        self.block_ends_of(QUERY_BLOCK, b, t, s)
    }

    /// [`FusedAttention::block_ends`] for blocks of `block` queries.
    fn block_ends_of(&self, block: usize, b: usize, t: usize, s: usize) -> Vec<usize> {
        let blocks = t.div_ceil(block);
        (0..b * blocks)
            .map(|i| {
                let (bi, blk) = (i / blocks, i % blocks);
                let r0 = blk * block;
                let r1 = (r0 + block).min(t);
                match &self.mask {
                    Some(m) => (r0..r1).map(|r| m.row_end(bi, r)).max().unwrap_or(s),
                    None => s,
                }
            })
            .collect()
    }

    fn check(&self, qv: &View4, kv: &View4, vv: &View4) -> Result<()> {
        let [b, heads, t, d] = qv.dims;
        let [kb, kv_heads, s, kd] = kv.dims;
        if kb != b || kd != d || vv.dims != kv.dims {
            candle_core::bail!(
                "fused attention: q {:?}, k {:?}, v {:?} do not fit together",
                qv.dims,
                kv.dims,
                vv.dims
            );
        }
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            candle_core::bail!("fused attention: {heads} heads over {kv_heads} kv heads");
        }
        if let Some(m) = &self.mask {
            if m.q_len != t || m.k_len != s || (m.batch != 1 && m.batch != b) {
                candle_core::bail!(
                    "fused attention: mask [{}, 1, {}, {}] for q_len {t}, k_len {s}, batch {b}",
                    m.batch,
                    m.q_len,
                    m.k_len
                );
            }
        }
        Ok(())
    }

    /// Gradients of q, k and v. The scores are recomputed block by block (only the output was
    /// kept from the forward pass), then `dV = P^T dO`, `dS = P * (dO V^T - rowsum(dO * O))`,
    /// `dQ = scale dS K`, `dK = scale dS^T Q`. Each task owns one (batch, kv head), so the sums
    /// over the heads of a group need no locking.
    fn backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        dout: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let o = o.contiguous()?;
        let dout = dout.contiguous()?;
        let (gq, lq) = q.storage_and_layout();
        let (gk, lk) = k.storage_and_layout();
        let (gv, lv) = v.storage_and_layout();
        let (go, lo) = o.storage_and_layout();
        let (gd, ld) = dout.storage_and_layout();
        let (
            Storage::Cpu(sq),
            Storage::Cpu(sk),
            Storage::Cpu(sv),
            Storage::Cpu(CpuStorage::F32(od)),
            Storage::Cpu(CpuStorage::F32(dd)),
        ) = (&*gq, &*gk, &*gv, &*go, &*gd)
        else {
            candle_core::bail!("fused attention backward: f32 CPU tensors only");
        };
        let (qd, qv) = view4(sq, lq, "q")?;
        let (kd, kv) = view4(sk, lk, "k")?;
        let (vd, vv) = view4(sv, lv, "v")?;
        self.check(&qv, &kv, &vv)?;
        let [b, heads, t, d] = qv.dims;
        let [_, kv_heads, s, _] = kv.dims;
        let (Some((o0, o1)), Some((d0, d1))) = (lo.contiguous_offsets(), ld.contiguous_offsets())
        else {
            candle_core::bail!("fused attention backward: output not contiguous");
        };
        let (od, dd) = (&od[o0..o1], &dd[d0..d1]);
        let out_row = heads * d;
        if od.len() != b * t * out_row || dd.len() != od.len() {
            candle_core::bail!("fused attention backward: output gradient has the wrong size");
        }
        let mut dq = vec![0f32; b * heads * t * d];
        let mut dk = vec![0f32; b * kv_heads * s * d];
        let mut dv = vec![0f32; b * kv_heads * s * d];
        if s > 0 && d > 0 && t > 0 {
            let rep = heads / kv_heads;
            let blocks = t.div_ceil(QUERY_BLOCK);
            let block_end = self.block_ends(b, t, s);
            let (qp, kp, vp, op, dp) = (
                qd.as_ptr() as usize,
                kd.as_ptr() as usize,
                vd.as_ptr() as usize,
                od.as_ptr() as usize,
                dd.as_ptr() as usize,
            );
            let (dqp, dkp, dvp) = (
                dq.as_mut_ptr() as usize,
                dk.as_mut_ptr() as usize,
                dv.as_mut_ptr() as usize,
            );
            let work = |task: usize| {
                let (bi, khi) = (task / kv_heads, task % kv_heads);
                let rows_max = QUERY_BLOCK.min(t);
                let mut p = vec![0f32; rows_max * s];
                let mut ds = vec![0f32; rows_max * s];
                let mut delta = vec![0f32; rows_max];
                let kv_off = (bi * kv_heads + khi) * s * d;
                for hi in khi * rep..(khi + 1) * rep {
                    for blk in 0..blocks {
                        let r0 = blk * QUERY_BLOCK;
                        let rows = QUERY_BLOCK.min(t - r0);
                        let kend = block_end[bi * blocks + blk];
                        let (p, ds) = (&mut p[..rows * kend], &mut ds[..rows * kend]);
                        let dout_blk = (bi * t + r0) * out_row + hi * d;
                        self.probabilities(
                            p,
                            qd,
                            &qv,
                            kd,
                            &kv,
                            Block {
                                bi,
                                hi,
                                khi,
                                r0,
                                rows,
                                kend,
                            },
                        );
                        // SAFETY (all gemm calls and raw slices here): the pointers address
                        // elements inside q, k, v, o and dout, whose 4-D / [b, t, heads * d]
                        // shapes were checked above, or this task's own rows of dq (heads of
                        // kv head khi of batch bi) and of dk / dv (kv head khi of batch bi);
                        // every buffer outlives the parallel loop.
                        for (r, dl) in delta[..rows].iter_mut().enumerate() {
                            let at = dout_blk + r * out_row;
                            let (o_row, d_row) = unsafe {
                                (
                                    std::slice::from_raw_parts((op as *const f32).add(at), d),
                                    std::slice::from_raw_parts((dp as *const f32).add(at), d),
                                )
                            };
                            *dl = o_row.iter().zip(d_row).map(|(a, b)| a * b).sum();
                        }
                        unsafe {
                            // dV[..kend] += P^T dO
                            gemm::gemm(
                                kend,
                                d,
                                rows,
                                (dvp as *mut f32).add(kv_off),
                                1,
                                d as isize,
                                true,
                                p.as_ptr(),
                                kend as isize,
                                1,
                                (dp as *const f32).add(dout_blk),
                                1,
                                out_row as isize,
                                1.0,
                                1.0,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            );
                            // dP = dO V^T
                            gemm::gemm(
                                rows,
                                kend,
                                d,
                                ds.as_mut_ptr(),
                                1,
                                kend as isize,
                                false,
                                (dp as *const f32).add(dout_blk),
                                1,
                                out_row as isize,
                                (vp as *const f32).add(vv.at(bi, khi, 0)),
                                vv.stride[2] as isize,
                                vv.stride[3] as isize,
                                0.0,
                                1.0,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            );
                        }
                        for (r, (gr, pr)) in ds
                            .chunks_exact_mut(kend)
                            .zip(p.chunks_exact(kend))
                            .enumerate()
                        {
                            let dl = delta[r];
                            for (g, &pv) in gr.iter_mut().zip(pr) {
                                *g = pv * (*g - dl);
                            }
                        }
                        unsafe {
                            // dQ = scale dS K
                            gemm::gemm(
                                rows,
                                d,
                                kend,
                                (dqp as *mut f32).add(((bi * heads + hi) * t + r0) * d),
                                1,
                                d as isize,
                                false,
                                ds.as_ptr(),
                                1,
                                kend as isize,
                                (kp as *const f32).add(kv.at(bi, khi, 0)),
                                kv.stride[3] as isize,
                                kv.stride[2] as isize,
                                0.0,
                                self.scale,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            );
                            // dK[..kend] += scale dS^T Q
                            gemm::gemm(
                                kend,
                                d,
                                rows,
                                (dkp as *mut f32).add(kv_off),
                                1,
                                d as isize,
                                true,
                                ds.as_ptr(),
                                kend as isize,
                                1,
                                (qp as *const f32).add(qv.at(bi, hi, r0)),
                                qv.stride[3] as isize,
                                qv.stride[2] as isize,
                                1.0,
                                self.scale,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            );
                        }
                    }
                }
            };
            let tasks = b * kv_heads;
            if tasks <= 1 || rayon::current_num_threads() <= 1 {
                (0..tasks).for_each(work);
            } else {
                use rayon::prelude::*;
                (0..tasks).into_par_iter().for_each(work);
            }
        }
        let dev = q.device();
        Ok((
            Tensor::from_vec(dq, (b, heads, t, d), dev)?,
            Tensor::from_vec(dk, (b, kv_heads, s, d), dev)?,
            Tensor::from_vec(dv, (b, kv_heads, s, d), dev)?,
        ))
    }
}

/// One block of queries of one head: batch `bi`, head `hi` (kv head `khi`), queries
/// `r0..r0 + rows`, keys `..kend`.
#[derive(Clone, Copy)]
struct Block {
    bi: usize,
    hi: usize,
    khi: usize,
    r0: usize,
    rows: usize,
    kend: usize,
}

impl FusedAttention {
    /// `p = softmax(scale Q K^T + mask)` of one block, `rows x kend`, row-major.
    fn probabilities(
        &self,
        p: &mut [f32],
        q: &[f32],
        qv: &View4,
        k: &[f32],
        kv: &View4,
        blk: Block,
    ) {
        let Block {
            bi,
            hi,
            khi,
            r0,
            rows,
            kend,
        } = blk;
        debug_assert!(p.len() >= rows * kend);
        // SAFETY: q and k hold the tensors qv and kv describe (checked 4-D, matching dims in
        // `check`), so the block's rows and keys lie inside them; p holds rows x kend values.
        unsafe {
            gemm::gemm(
                rows,
                kend,
                qv.dims[3],
                p.as_mut_ptr(),
                1,
                kend as isize,
                false,
                q.as_ptr().add(qv.at(bi, hi, r0)),
                qv.stride[3] as isize,
                qv.stride[2] as isize,
                k.as_ptr().add(kv.at(bi, khi, 0)),
                kv.stride[2] as isize,
                kv.stride[3] as isize,
                0.0,
                self.scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for (r, row) in p[..rows * kend].chunks_exact_mut(kend).enumerate() {
            let mask = self.mask.as_ref().map(|m| &m.row(bi, r0 + r)[..kend]);
            softmax_row(row, mask);
        }
    }
}

impl FusedAttention {
    /// One (batch, head) through the panel kernel: `K^T` (pre-scaled) and `V` packed once, then
    /// per block of queries the scores, their softmax, and `P V` straight into the output.
    ///
    /// # Safety
    /// `block_end` holds this batch row's [`FusedAttention::block_ends`].
    /// The views must have passed [`FusedAttention::check`], `qv.stride[3]` must be 1, the CPU
    /// must run the panel kernel, and `out` must address t rows (`ors` apart) of `d` writable
    /// floats that no other thread touches.
    unsafe fn head_packed(
        &self,
        (q, qv): (&[f32], &View4),
        (k, kv): (&[f32], &View4),
        (v, vv): (&[f32], &View4),
        (bi, hi, khi): (usize, usize, usize),
        block_end: &[usize],
        (out, ors): (*mut f32, usize),
    ) {
        use super::packed_gemm::{pack_panels, panel_matmul};
        let [_, _, t, d] = qv.dims;
        let s = kv.dims[2];
        let blocks = t.div_ceil(PACKED_QUERY_BLOCK);
        let mut kp = Vec::new();
        let mut vp = Vec::new();
        let k0 = kv.at(bi, khi, 0);
        pack_panels(
            &mut kp,
            &k[k0..],
            (d, s),
            (kv.stride[3], kv.stride[2]),
            self.scale,
        );
        let v0 = vv.at(bi, khi, 0);
        pack_panels(&mut vp, &v[v0..], (s, d), (vv.stride[2], vv.stride[3]), 1.0);
        let mut scores = vec![0f32; PACKED_QUERY_BLOCK.min(t) * s];
        for (blk, &kend) in block_end.iter().enumerate().take(blocks) {
            let r0 = blk * PACKED_QUERY_BLOCK;
            let rows = PACKED_QUERY_BLOCK.min(t - r0);
            let sc = &mut scores[..rows * kend];
            // SAFETY: q's rows r0..r0+rows of head hi hold d contiguous floats (stride 1);
            // the panels hold d x s (keys) and s x d (values), and kend <= s.
            unsafe {
                panel_matmul(
                    (q.as_ptr().add(qv.at(bi, hi, r0)), qv.stride[2]),
                    (rows, d),
                    (kp.as_ptr(), d, kend),
                    (0, kend.div_ceil(super::packed_gemm::PANEL)),
                    (sc.as_mut_ptr(), kend),
                    super::packed_gemm::Epilogue::Store,
                    std::ptr::null(),
                );
            }
            // Unnormalised probabilities; each output row is divided by its sum after `P V`,
            // d values instead of kend.
            let mut sums = [0f32; PACKED_QUERY_BLOCK];
            for ((r, row), sum) in sc.chunks_exact_mut(kend).enumerate().zip(&mut sums) {
                *sum = match &self.mask {
                    // Keys past the row's end are masked: exactly zero after the softmax.
                    Some(m) => {
                        let end = m.row_end(bi, r0 + r).min(kend);
                        let (live, dead) = row.split_at_mut(end);
                        dead.fill(0.0);
                        exp_shifted_row(live, m.live_row(bi, r0 + r, end))
                    }
                    None => exp_shifted_row(row, None),
                };
            }
            // SAFETY: as above; the output rows r0..r0+rows are this task's.
            unsafe {
                panel_matmul(
                    (sc.as_ptr(), kend),
                    (rows, kend),
                    (vp.as_ptr(), s, d),
                    (0, d.div_ceil(super::packed_gemm::PANEL)),
                    (out.add(r0 * ors), ors),
                    super::packed_gemm::Epilogue::Store,
                    std::ptr::null(),
                );
            }
            for (r, &sum) in sums.iter().enumerate().take(rows) {
                let inv = 1.0 / sum;
                // SAFETY: as above: row r0 + r of this task's output, d floats.
                let o = unsafe { std::slice::from_raw_parts_mut(out.add((r0 + r) * ors), d) };
                for v in o {
                    *v *= inv;
                }
            }
        }
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, qv) = view4(s1, l1, "q")?;
        let (k, kv) = view4(s2, l2, "k")?;
        let (v, vv) = view4(s3, l3, "v")?;
        self.check(&qv, &kv, &vv)?;
        let [b, heads, t, d] = qv.dims;
        let [_, kv_heads, s, _] = kv.dims;
        let rep = heads / kv_heads;
        if s == 0 || d == 0 {
            return Ok((
                CpuStorage::F32(vec![0f32; b * t * heads * d]),
                Shape::from((b, t, heads * d)),
            ));
        }
        // Every (batch, head, query) row is written below: every block has at least one key.
        let mut out = super::fastmath::uninit_buffer(b * t * heads * d);
        let blocks = t.div_ceil(QUERY_BLOCK);
        let (vp, op) = (v.as_ptr() as usize, out.as_mut_ptr() as usize);
        let out_row = heads * d;
        // The panel kernel reads query rows as contiguous vectors.
        let packed = super::packed_gemm::available() && qv.stride[3] == 1;
        let packed_blocks = t.div_ceil(PACKED_QUERY_BLOCK);
        let (block_end, packed_end) = if packed {
            (Vec::new(), self.block_ends_of(PACKED_QUERY_BLOCK, b, t, s))
        } else {
            (self.block_ends(b, t, s), Vec::new())
        };
        let work = |bh: usize| {
            let (bi, hi) = (bh / heads, bh % heads);
            let khi = hi / rep;
            if packed {
                let o = (op as *mut f32).wrapping_add(bi * t * out_row + hi * d);
                // SAFETY: this task alone writes rows 0..t, columns hi*d..(hi+1)*d of batch
                // bi's output (row stride out_row), inside `out`, which outlives the scope.
                unsafe {
                    self.head_packed(
                        (q, &qv),
                        (k, &kv),
                        (v, &vv),
                        (bi, hi, khi),
                        &packed_end[bi * packed_blocks..(bi + 1) * packed_blocks],
                        (o, out_row),
                    )
                };
                return;
            }
            let mut scores = vec![0f32; QUERY_BLOCK.min(t) * s];
            for blk in 0..blocks {
                let r0 = blk * QUERY_BLOCK;
                let rows = QUERY_BLOCK.min(t - r0);
                let kend = block_end[bi * blocks + blk];
                let sc = &mut scores[..rows * kend];
                self.probabilities(
                    sc,
                    q,
                    &qv,
                    k,
                    &kv,
                    Block {
                        bi,
                        hi,
                        khi,
                        r0,
                        rows,
                        kend,
                    },
                );
                // SAFETY: every pointer below addresses elements inside q, k, v (their layouts
                // were checked to be 4-D with these dims) or this task's own block of `out`
                // (rows r0..r0+rows of head hi of batch bi: disjoint across tasks); the
                // buffers outlive the rayon scope.
                unsafe {
                    gemm::gemm(
                        rows,
                        d,
                        kend,
                        (op as *mut f32).add((bi * t + r0) * out_row + hi * d),
                        1,
                        out_row as isize,
                        false,
                        sc.as_ptr(),
                        1,
                        kend as isize,
                        (vp as *const f32).add(vv.at(bi, khi, 0)),
                        vv.stride[3] as isize,
                        vv.stride[2] as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        };
        let tasks = b * heads;
        if tasks <= 1 || rayon::current_num_threads() <= 1 {
            (0..tasks).for_each(work);
        } else if !(packed && super::spin_pool::run(tasks, &work)) {
            use rayon::prelude::*;
            (0..tasks).into_par_iter().for_each(work);
        }
        // SAFETY: each (batch, head, block) task wrote its rows x head_dim part of `out`, and
        // the tasks cover every batch, head and query.
        let out = unsafe { super::fastmath::assume_init(out) };
        Ok((CpuStorage::F32(out), Shape::from((b, t, heads * d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = self.backward(q, k, v, res, grad_res)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
