//! CPU f32 kernels for a whole-decoder pass on plain buffers: strided gemm calls, RMSNorm,
//! rotary embedding and causal attention, forward and backward. The hand-written LoRA training
//! pass (`train::lora_backprop`) is built from them.
//!
//! A forward-only inference path on the same kernels was measured too: 82 ms against the
//! candle composition's 83-85 ms at seq 256 and no gain at seq 64 on the benchmark Llama (both
//! are bound by the matmuls), so inference stays on the candle blocks.

use candle_core::DType;
use rayon::prelude::*;

use super::decoder::Decoder;
use crate::kernels::fastmath;

/// Shapes of one pass.
#[derive(Clone, Copy)]
pub(crate) struct Dims {
    pub b: usize,
    pub t: usize,
    pub n: usize,
    pub h: usize,
    pub f: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub d: usize,
    pub q: usize,
    pub kv: usize,
    pub vocab: usize,
}

impl Dims {
    pub fn qkv(&self) -> usize {
        self.q + 2 * self.kv
    }
}

/// Shapes, rotary tables and the attention scale of one pass over `b` sequences of `t`
/// tokens at positions `0..t`.
pub(crate) struct Geometry {
    pub dims: Dims,
    cos: Vec<f32>,
    sin: Vec<f32>,
    scale: f32,
}

impl Geometry {
    pub fn new(dec: &Decoder, b: usize, t: usize) -> candle_core::Result<Self> {
        let c = &dec.cfg;
        let dims = Dims {
            b,
            t,
            n: b * t,
            h: c.hidden_size,
            f: c.intermediate_size,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            d: c.head_dim,
            q: c.num_heads * c.head_dim,
            kv: c.num_kv_heads * c.head_dim,
            vocab: c.vocab_size,
        };
        let (cos, sin) = dec.rotary.cos_sin_range(0, t)?;
        let (cos, sin): (Vec<f32>, Vec<f32>) = (
            cos.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
            sin.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
        );
        if cos.len() != t * dims.d / 2 {
            candle_core::bail!(
                "decoder-cpu: rotary table of {} entries for {t} positions of head_dim {}",
                cos.len(),
                dims.d
            );
        }
        let scale = dec
            .layers
            .first()
            .map(|l| l.self_attn.cfg.scale as f32)
            .unwrap_or(1.0);
        Ok(Self {
            dims,
            cos,
            sin,
            scale,
        })
    }

    /// Rotates q and k in place (HF's `rotate_half` convention); `back` applies the inverse
    /// rotation, which is the backward pass of an orthogonal map.
    pub fn rope(&self, qkv: &mut [f32], back: bool) {
        let dm = self.dims;
        let (t, d, half) = (dm.t, dm.d, dm.d / 2);
        let rows = dm.q + dm.kv;
        let width = dm.qkv();
        let sign = if back { -1.0 } else { 1.0 };
        qkv.par_chunks_mut(width).enumerate().for_each(|(row, r)| {
            let pos = row % t;
            let cos = &self.cos[pos * half..(pos + 1) * half];
            let sin = &self.sin[pos * half..(pos + 1) * half];
            for head in r[..rows].chunks_mut(d) {
                let (x1, x2) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (x1[i], x2[i]);
                    let (c, s) = (cos[i], sign * sin[i]);
                    x1[i] = a * c - b * s;
                    x2[i] = b * c + a * s;
                }
            }
        });
    }

    /// Causal softmax attention per (sequence, head), with GQA groups sharing k and v.
    pub fn attention_forward(&self, qkv: &[f32], probs: &mut [f32], attn: &mut [f32]) {
        let dm = self.dims;
        let (t, d, width) = (dm.t, dm.d, dm.qkv());
        let group = dm.heads / dm.kv_heads;
        let scale = self.scale;
        assert!(qkv.len() >= dm.n * width && attn.len() >= dm.n * dm.q);
        let attn_ptr = SendPtr(attn.as_mut_ptr());
        let none = gemm::Parallelism::None;
        probs
            .par_chunks_mut(t * t)
            .enumerate()
            .for_each(|(pair, p)| {
                let (bi, head) = (pair / dm.heads, pair % dm.heads);
                let kvh = head / group;
                let base = bi * t * width;
                let q = &qkv[base + head * d..];
                let k = &qkv[base + dm.q + kvh * d..];
                let v = &qkv[base + dm.q + dm.kv + kvh * d..];
                // Row blocks of queries see only the keys up to their last row: the causal
                // mask's zeros are never computed.
                for r0 in (0..t).step_by(CAUSAL_BLOCK) {
                    let r1 = (r0 + CAUSAL_BLOCK).min(t);
                    let rows = &mut p[r0 * t..];
                    matmul(
                        r1 - r0,
                        r1,
                        d,
                        &q[r0 * width..],
                        width,
                        1,
                        k,
                        1,
                        width,
                        rows,
                        t,
                        false,
                        scale,
                        none,
                    );
                    for (i, row) in rows.chunks_mut(t).take(r1 - r0).enumerate() {
                        let (live, masked) = row.split_at_mut(r0 + i + 1);
                        fastmath::softmax_row(live, None);
                        masked.fill(0.0);
                    }
                    // SAFETY: each (sequence, head) pair writes its own d columns of its own t
                    // rows of `attn` (in bounds by the assert above); `v` holds t rows of
                    // width `width`.
                    unsafe {
                        matmul_raw(
                            (r1 - r0, d, r1),
                            (p[r0 * t..].as_ptr(), t, 1),
                            (v.as_ptr(), width, 1),
                            (attn_ptr.get().add((bi * t + r0) * dm.q + head * d), dm.q),
                            false,
                            1.0,
                            none,
                        );
                    }
                }
            });
    }

    pub fn attention_backward(&self, qkv: &[f32], probs: &[f32], dattn: &[f32], dqkv: &mut [f32]) {
        let dm = self.dims;
        let (t, d, width) = (dm.t, dm.d, dm.qkv());
        let group = dm.heads / dm.kv_heads;
        let scale = self.scale;
        assert!(qkv.len() >= dm.n * width && dqkv.len() >= dm.n * width);
        assert!(dattn.len() >= dm.n * dm.q && probs.len() >= dm.b * dm.heads * t * t);
        let dptr = SendPtr(dqkv.as_mut_ptr());
        let none = gemm::Parallelism::None;
        (0..dm.b * dm.kv_heads).into_par_iter().for_each(|task| {
            let (bi, kvh) = (task / dm.kv_heads, task % dm.kv_heads);
            let base = bi * t * width;
            let k = &qkv[base + dm.q + kvh * d..];
            let v = &qkv[base + dm.q + dm.kv + kvh * d..];
            let mut dp = vec![0f32; t * t];
            for head in kvh * group..(kvh + 1) * group {
                let p = &probs[(bi * dm.heads + head) * t * t..][..t * t];
                let q = &qkv[base + head * d..];
                let dout = &dattn[bi * t * dm.q + head * d..];
                for r0 in (0..t).step_by(CAUSAL_BLOCK) {
                    let r1 = (r0 + CAUSAL_BLOCK).min(t);
                    let pb = &p[r0 * t..];
                    let db = &mut dp[r0 * t..];
                    let ob = &dout[r0 * dm.q..];
                    // dP = dO V^T.
                    matmul(
                        r1 - r0,
                        r1,
                        d,
                        ob,
                        dm.q,
                        1,
                        v,
                        1,
                        width,
                        db,
                        t,
                        false,
                        1.0,
                        none,
                    );
                    // dS = P (dP - rowsum(dP P)) * scale, in place.
                    for (prow, dprow) in pb.chunks(t).zip(db.chunks_mut(t)).take(r1 - r0) {
                        let (prow, dprow) = (&prow[..r1], &mut dprow[..r1]);
                        let dot = dot(prow, dprow);
                        for (g, &pv) in dprow.iter_mut().zip(prow) {
                            *g = pv * (*g - dot) * scale;
                        }
                    }
                    // SAFETY: this task alone writes the q columns of its group's heads and
                    // the k and v columns of its kv head, on its own sequence's t rows (in
                    // bounds by the asserts above).
                    unsafe {
                        let at = |off: usize| dptr.get().add(base + off);
                        // dV[..r1] += P^T dO.
                        matmul_raw(
                            (r1, d, r1 - r0),
                            (pb.as_ptr(), 1, t),
                            (ob.as_ptr(), dm.q, 1),
                            (at(dm.q + dm.kv + kvh * d), width),
                            true,
                            1.0,
                            none,
                        );
                        // dQ = dS K.
                        matmul_raw(
                            (r1 - r0, d, r1),
                            (db.as_ptr(), t, 1),
                            (k.as_ptr(), width, 1),
                            (at(r0 * width + head * d), width),
                            false,
                            1.0,
                            none,
                        );
                        // dK[..r1] += dS^T Q.
                        matmul_raw(
                            (r1, d, r1 - r0),
                            (db.as_ptr(), 1, t),
                            (q[r0 * width..].as_ptr(), width, 1),
                            (at(dm.q + kvh * d), width),
                            true,
                            1.0,
                            none,
                        );
                    }
                }
            }
        });
    }
}

/// Query rows per block of the causal attention (a multiple of the 16-float vector width).
const CAUSAL_BLOCK: usize = 32;

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint regions of one buffer to parallel tasks (see call sites).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `dst (m x n) = [dst +] beta * lhs @ rhs` with explicit row/column strides (elements).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    beta: f32,
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| {
        (rows.saturating_sub(1)) * rs + (cols.saturating_sub(1)) * cs + 1
    };
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    // The bounds every access below stays within; a violation is a bug in this module.
    assert!(lhs.len() >= last(m, lhs_rs, k, lhs_cs), "lhs out of bounds");
    assert!(rhs.len() >= last(k, rhs_rs, n, rhs_cs), "rhs out of bounds");
    assert!(dst.len() >= last(m, dst_rs, n, 1), "dst out of bounds");
    // SAFETY: the asserts above bound every element gemm reads or writes.
    unsafe {
        matmul_raw(
            (m, n, k),
            (lhs.as_ptr(), lhs_rs, lhs_cs),
            (rhs.as_ptr(), rhs_rs, rhs_cs),
            (dst.as_mut_ptr(), dst_rs),
            accumulate,
            beta,
            par,
        )
    }
}

/// [`matmul`] on raw pointers, for parallel tasks that write disjoint strided blocks of one
/// buffer.
///
/// # Safety
/// Every element `(i, j)` of the three operands, at `ptr + i * rs + j * cs`, must be valid,
/// and no other thread may touch the written block of `dst` meanwhile.
pub(crate) unsafe fn matmul_raw(
    (m, n, k): (usize, usize, usize),
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    accumulate: bool,
    beta: f32,
    par: gemm::Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        1.0,
        beta,
        false,
        false,
        false,
        par,
    );
}

/// `y = x * inv * w` per row, with `inv = 1 / sqrt(mean(x^2) + eps)` kept for the backward.
pub(crate) fn rms_forward(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], inv: &mut [f32]) {
    let h = w.len();
    y.par_chunks_mut(h)
        .zip(x.par_chunks(h))
        .zip(inv.par_iter_mut())
        .for_each(|((yr, xr), iv)| {
            let ms: f32 = dot(xr, xr) / h as f32;
            let r = 1.0 / (ms + eps).sqrt();
            *iv = r;
            for ((o, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
                *o = xv * r * wv;
            }
        });
}

/// `dx += inv * (g - xn * mean(g * xn))` with `g = dy * w`, `xn = x * inv`.
pub(crate) fn rms_backward(x: &[f32], inv: &[f32], w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let h = w.len();
    dx.par_chunks_mut(h)
        .zip(x.par_chunks(h))
        .zip(dy.par_chunks(h))
        .zip(inv.par_iter())
        .for_each(|(((dxr, xr), dyr), &r)| {
            let c = r * dot3(xr, dyr, w) / h as f32;
            for (((o, &xv), &g), &wv) in dxr.iter_mut().zip(xr).zip(dyr).zip(w) {
                *o += r * (g * wv - xv * r * c);
            }
        });
}

/// Sum of `a[i] * b[i]` over 16 independent lanes, so the loop vectorises (a single running sum
/// would serialise on the add's latency).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Sum of `a[i] * b[i] * c[i]`, vectorised as [`dot`].
pub(crate) fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc, cc) = (a.chunks_exact(16), b.chunks_exact(16), c.chunks_exact(16));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .zip(cc.remainder())
        .map(|((x, y), z)| x * y * z)
        .sum();
    for ((x, y), z) in ac.zip(bc).zip(cc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i] * z[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
