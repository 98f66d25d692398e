//! Vectorised exp-based element-wise kernels for the inference path: softmax rows and the gated
//! activations of SwiGLU / GeGLU.
//!
//! glibc's scalar `expf` was 8-10 % of a 256-token Llama forward pass here (and it takes a slow
//! errno path on every masked score, which underflows). These loops use a Cephes-style
//! polynomial (relative error about 1e-7, well inside the 1e-5 parity budget), written so LLVM
//! vectorises them; the crate is built for baseline x86-64, so the AVX2+FMA copies are chosen at
//! run time.

use std::mem::MaybeUninit;

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two so `x - n ln2` stays exact for the n this range produces.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this exp underflows f32's normal range; the result is 0.
const EXP_MIN: f32 = -87.336_55;
const EXP_MAX: f32 = 88.376_26;

/// exp(x) for f32, branch-free so it vectorises.
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    let xc = x.clamp(EXP_MIN, EXP_MAX);
    let n = (xc * LOG2E + 0.5).floor();
    let r = xc - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r2 + r + 1.0;
    // 2^n from n + 127 placed in the mantissa by adding 2^23 (n is integral, in [-127, 128]);
    // an `as i32` cast would be a saturating conversion that LLVM does not vectorise.
    let biased = (n + (127.0 + 8_388_608.0)).to_bits() & 0x007f_ffff;
    let scale = f32::from_bits(biased << 23);
    let v = y * scale;
    if x < EXP_MIN {
        0.0
    } else {
        v
    }
}

/// Sum with eight independent lanes: an in-order float reduction would keep LLVM from
/// vectorising it.
#[inline(always)]
fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

#[inline(always)]
fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter()
        .chain(tail)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// `row = exp(row + mask - max)` in place; returns the sum.
#[inline(always)]
fn exp_shifted_row_generic(row: &mut [f32], mask: Option<&[f32]>) -> f32 {
    if let Some(m) = mask {
        for (x, &a) in row.iter_mut().zip(m) {
            *x += a;
        }
    }
    let max = lane_max(row);
    for x in row.iter_mut() {
        *x = exp_approx(*x - max);
    }
    lane_sum(row)
}

#[inline(always)]
fn softmax_row_generic(row: &mut [f32], mask: Option<&[f32]>) {
    let inv = 1.0 / exp_shifted_row_generic(row, mask);
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// ln(sum_j exp(row_j)) with the row's max taken out first.
#[inline(always)]
fn log_sum_exp_generic(row: &[f32]) -> f32 {
    let max = lane_max(row);
    if !max.is_finite() {
        return max;
    }
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += exp_approx(c[i] - max);
        }
    }
    let sum = acc.iter().sum::<f32>() + tail.iter().map(|&v| exp_approx(v - max)).sum::<f32>();
    max + sum.ln()
}

#[inline(always)]
fn silu_mul_generic(gate: &[f32], up: &[f32], out: &mut [MaybeUninit<f32>]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        o.write(g / (1.0 + exp_approx(-g)) * u);
    }
}

/// GELU with the tanh approximation, tanh(y) written as 1 - 2 / (exp(2y) + 1).
#[inline(always)]
fn gelu_tanh_mul_generic(gate: &[f32], up: &[f32], out: &mut [MaybeUninit<f32>]) {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let y = C * (g + 0.044_715 * g * g * g);
        let t = 1.0 - 2.0 / (exp_approx(2.0 * y) + 1.0);
        o.write(0.5 * g * (1.0 + t) * u);
    }
}

/// Gradients of `silu(g) * u`: `dg = dout * u * s * (1 + g * (1 - s))`, `du = dout * g * s`,
/// with `s = sigmoid(g)`.
#[inline(always)]
fn silu_mul_bwd_generic(gate: &[f32], up: &[f32], dout: &[f32], dg: &mut [f32], du: &mut [f32]) {
    for i in 0..gate
        .len()
        .min(up.len())
        .min(dout.len())
        .min(dg.len())
        .min(du.len())
    {
        let (g, u, d) = (gate[i], up[i], dout[i]);
        let sg = 1.0 / (1.0 + exp_approx(-g));
        dg[i] = d * u * sg * (1.0 + g * (1.0 - sg));
        du[i] = d * g * sg;
    }
}

/// Gradients of `gelu_tanh(g) * u`.
#[inline(always)]
fn gelu_tanh_mul_bwd_generic(
    gate: &[f32],
    up: &[f32],
    dout: &[f32],
    dg: &mut [f32],
    du: &mut [f32],
) {
    const C: f32 = 0.797_884_6;
    for i in 0..gate
        .len()
        .min(up.len())
        .min(dout.len())
        .min(dg.len())
        .min(du.len())
    {
        let (g, u, d) = (gate[i], up[i], dout[i]);
        let y = C * (g + 0.044_715 * g * g * g);
        let t = 1.0 - 2.0 / (exp_approx(2.0 * y) + 1.0);
        let act = 0.5 * g * (1.0 + t);
        let dact = 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * C * (1.0 + 3.0 * 0.044_715 * g * g);
        dg[i] = d * u * dact;
        du[i] = d * act;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul_bwd(g: &[f32], u: &[f32], d: &[f32], dg: &mut [f32], du: &mut [f32]) {
        super::silu_mul_bwd_generic(g, u, d, dg, du)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gelu_tanh_mul_bwd(
        g: &[f32],
        u: &[f32],
        d: &[f32],
        dg: &mut [f32],
        du: &mut [f32],
    ) {
        super::gelu_tanh_mul_bwd_generic(g, u, d, dg, du)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn log_sum_exp(row: &[f32]) -> f32 {
        super::log_sum_exp_generic(row)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax_row(row: &mut [f32], mask: Option<&[f32]>) {
        super::softmax_row_generic(row, mask)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [std::mem::MaybeUninit<f32>]) {
        super::silu_mul_generic(gate, up, out)
    }
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gelu_tanh_mul(gate: &[f32], up: &[f32], out: &mut [std::mem::MaybeUninit<f32>]) {
        super::gelu_tanh_mul_generic(gate, up, out)
    }
}

/// The same loops compiled for AVX-512, where LLVM vectorises them 16 lanes wide.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::exp_approx`] on 16 lanes (the same reduction and polynomial, with FMAs).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp16(x: __m512) -> __m512 {
        let xc = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(super::EXP_MIN)),
            _mm512_set1_ps(super::EXP_MAX),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(
            _mm512_fmadd_ps(xc, _mm512_set1_ps(super::LOG2E), _mm512_set1_ps(0.5)),
        );
        let r = _mm512_fnmadd_ps(
            n,
            _mm512_set1_ps(super::LN2_LO),
            _mm512_fnmadd_ps(n, _mm512_set1_ps(super::LN2_HI), xc),
        );
        let r2 = _mm512_mul_ps(r, r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        let biased = _mm512_and_si512(
            _mm512_castps_si512(_mm512_add_ps(n, _mm512_set1_ps(127.0 + 8_388_608.0))),
            _mm512_set1_epi32(0x007f_ffff),
        );
        let v = _mm512_mul_ps(y, _mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased)));
        let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(super::EXP_MIN));
        _mm512_mask_blend_ps(under, v, _mm512_setzero_ps())
    }

    /// Lanes `i..i + 16` that lie inside a row of `n`.
    #[inline]
    fn lanes(i: usize, n: usize) -> __mmask16 {
        let rem = n - i;
        if rem >= 16 {
            0xffff
        } else {
            ((1u32 << rem) - 1) as __mmask16
        }
    }

    /// [`super::softmax_row`] in three passes over 16-lane vectors: mask and max, exp and sum,
    /// scale. Masked-out lanes of a partial vector are neither loaded nor stored.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn softmax_row(row: &mut [f32], mask: Option<&[f32]>) {
        if mask.is_some_and(|m| m.len() < row.len()) {
            return super::softmax_row_generic(row, mask);
        }
        // SAFETY: the mask covers the row (checked above).
        let inv = _mm512_set1_ps(1.0 / unsafe { exp_shifted_row(row, mask) });
        let (n, p) = (row.len(), row.as_mut_ptr());
        let mut i = 0;
        while i < n {
            let k = lanes(i, n);
            // SAFETY: lanes(i, n) covers only indices below n.
            let x = unsafe { _mm512_maskz_loadu_ps(k, p.add(i)) };
            unsafe { _mm512_mask_storeu_ps(p.add(i), k, _mm512_mul_ps(x, inv)) };
            i += 16;
        }
    }

    /// `row = exp(row + mask - max)` in place; returns the sum (the softmax's denominator).
    ///
    /// # Safety
    /// A mask must be at least as long as the row; the CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_shifted_row(row: &mut [f32], mask: Option<&[f32]>) -> f32 {
        let n = row.len();
        let p = row.as_mut_ptr();
        let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        // SAFETY (all loads and stores): lanes(i, n) covers only indices below n, inside `row`
        // and `mask`.
        while i < n {
            let k = lanes(i, n);
            let mut x = unsafe { _mm512_maskz_loadu_ps(k, p.add(i)) };
            if let Some(m) = mask {
                x = _mm512_add_ps(x, unsafe { _mm512_maskz_loadu_ps(k, m.as_ptr().add(i)) });
                unsafe { _mm512_mask_storeu_ps(p.add(i), k, x) };
            }
            vmax = _mm512_mask_max_ps(vmax, k, vmax, x);
            i += 16;
        }
        let vm = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
        let mut vsum = _mm512_setzero_ps();
        i = 0;
        while i < n {
            let k = lanes(i, n);
            let e = exp16(_mm512_sub_ps(
                unsafe { _mm512_maskz_loadu_ps(k, p.add(i)) },
                vm,
            ));
            unsafe { _mm512_mask_storeu_ps(p.add(i), k, e) };
            vsum = _mm512_mask_add_ps(vsum, k, vsum, e);
            i += 16;
        }
        _mm512_reduce_add_ps(vsum)
    }
    /// [`super::silu_mul`] on 16-lane vectors: `g / (1 + exp(-g)) * u`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [std::mem::MaybeUninit<f32>]) {
        let n = gate.len().min(up.len()).min(out.len());
        let (g, u, o) = (gate.as_ptr(), up.as_ptr(), out.as_mut_ptr() as *mut f32);
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        while i < n {
            let k = lanes(i, n);
            // SAFETY: lanes(i, n) covers only indices below n, inside all three slices.
            let (gv, uv) = unsafe {
                (
                    _mm512_maskz_loadu_ps(k, g.add(i)),
                    _mm512_maskz_loadu_ps(k, u.add(i)),
                )
            };
            let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
            let v = _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(one, e)), uv);
            unsafe { _mm512_mask_storeu_ps(o.add(i), k, v) };
            i += 16;
        }
    }
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")]
    pub unsafe fn gelu_tanh_mul(gate: &[f32], up: &[f32], out: &mut [std::mem::MaybeUninit<f32>]) {
        super::gelu_tanh_mul_generic(gate, up, out)
    }
}

/// Whether this CPU runs the AVX-512 copies (AVX-512 F, DQ, VL and BW, with AVX2 and FMA).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bw")
            && has_avx2()
    })
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// The softmax of one row without its last division: `row = exp(row + mask - max)` in place,
/// returning the sum to divide by. A caller that multiplies the row into something smaller
/// (attention's `P V`) divides that instead. `mask`, if given, must be as long as the row.
pub fn exp_shifted_row(row: &mut [f32], mask: Option<&[f32]>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && mask.is_none_or(|m| m.len() >= row.len()) {
        // SAFETY: the CPU supports the features the function was compiled for; the mask covers
        // the row.
        return unsafe { avx512::exp_shifted_row(row, mask) };
    }
    exp_shifted_row_generic(row, mask)
}

/// In-place softmax of one row after adding an optional additive mask row of the same length.
pub fn softmax_row(row: &mut [f32], mask: Option<&[f32]>) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports the features the function was compiled for.
        return unsafe { avx512::softmax_row(row, mask) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports the features the function was compiled for.
        return unsafe { avx2::softmax_row(row, mask) };
    }
    softmax_row_generic(row, mask)
}

/// ln(sum_j exp(row_j)), computed stably (the max is taken out first).
pub fn log_sum_exp(row: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as in `softmax_row`.
        return unsafe { avx2::log_sum_exp(row) };
    }
    log_sum_exp_generic(row)
}

/// `out = silu(gate) * up`, element-wise.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports the features the function was compiled for.
        return unsafe { avx512::silu_mul(gate, up, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as in `softmax_row`.
        return unsafe { avx2::silu_mul(gate, up, out) };
    }
    silu_mul_generic(gate, up, out)
}

/// `out = gelu_tanh(gate) * up`, element-wise.
pub fn gelu_tanh_mul(gate: &[f32], up: &[f32], out: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports the features the function was compiled for.
        return unsafe { avx512::gelu_tanh_mul(gate, up, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as in `softmax_row`.
        return unsafe { avx2::gelu_tanh_mul(gate, up, out) };
    }
    gelu_tanh_mul_generic(gate, up, out)
}

/// Gradients of [`silu_mul`] with respect to both inputs.
pub fn silu_mul_bwd(gate: &[f32], up: &[f32], dout: &[f32], dg: &mut [f32], du: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as in `softmax_row`.
        return unsafe { avx2::silu_mul_bwd(gate, up, dout, dg, du) };
    }
    silu_mul_bwd_generic(gate, up, dout, dg, du)
}

/// Gradients of [`gelu_tanh_mul`] with respect to both inputs.
pub fn gelu_tanh_mul_bwd(gate: &[f32], up: &[f32], dout: &[f32], dg: &mut [f32], du: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: as in `softmax_row`.
        return unsafe { avx2::gelu_tanh_mul_bwd(gate, up, dout, dg, du) };
    }
    gelu_tanh_mul_bwd_generic(gate, up, dout, dg, du)
}

/// A buffer for a kernel that writes every element before anyone reads it: skips the memset
/// of `vec![0.0; n]` (3 % of a 256-token forward pass here).
pub fn uninit_buffer(n: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(n);
    v.resize_with(n, MaybeUninit::uninit);
    v
}

/// # Safety
/// Every element of `v` must have been written.
pub unsafe fn assume_init(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: MaybeUninit<f32> has f32's layout; the caller vouches that all are initialised.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut f32, v.len(), v.capacity()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_over_the_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_approx(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_approx(-1e30), 0.0);
        assert_eq!(exp_approx(f32::MIN), 0.0);
        assert!(exp_approx(1e30).is_finite());
    }

    #[test]
    fn softmax_row_matches_the_definition_and_masks() {
        let mut row = vec![0.5f32, -1.0, 3.0, 2.0];
        let mask = [0.0, f32::MIN, 0.0, 0.0];
        softmax_row(&mut row, Some(&mask));
        let e: Vec<f64> = [0.5f64, 3.0, 2.0].iter().map(|v| v.exp()).collect();
        let s: f64 = e.iter().sum();
        assert_eq!(row[1], 0.0);
        for (got, want) in [row[0], row[2], row[3]].iter().zip(e.iter().map(|v| v / s)) {
            assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
        // A fully masked row stays finite and uniform, as the unfused path gives.
        let mut row = vec![1.0f32, 2.0, 3.0];
        softmax_row(&mut row, Some(&[f32::MIN; 3]));
        assert!(row.iter().all(|&p| (p - 1.0 / 3.0).abs() < 1e-6), "{row:?}");
    }

    #[test]
    fn every_softmax_copy_agrees_with_the_portable_loop() {
        let mut seed = 12345u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32
        };
        for n in 1..70 {
            let row: Vec<f32> = (0..n).map(|_| next() * 20.0 - 10.0).collect();
            let mask: Vec<f32> = (0..n)
                .map(|i| if i > 0 && next() < 0.3 { f32::MIN } else { 0.0 })
                .collect();
            for m in [None, Some(&mask[..])] {
                let (mut got, mut want) = (row.clone(), row.clone());
                softmax_row(&mut got, m);
                softmax_row_generic(&mut want, m);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-6, "n {n}: {g} vs {w}");
                }
                let sum: f32 = got.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "n {n}: sum {sum}");
                let mut shifted = row.clone();
                let total = exp_shifted_row(&mut shifted, m);
                for (e, w) in shifted.iter().zip(&want) {
                    assert!((e / total - w).abs() < 1e-6, "n {n}: {} vs {w}", e / total);
                }
            }
        }
    }

    #[test]
    fn gated_activations_match_their_formulas() {
        let g: Vec<f32> = (-400..400).map(|i| i as f32 * 0.05).collect();
        let u: Vec<f32> = g.iter().map(|x| 0.3 - x * 0.1).collect();
        let mut buf = uninit_buffer(g.len());
        silu_mul(&g, &u, &mut buf);
        // SAFETY: silu_mul wrote every element.
        let out = unsafe { assume_init(buf) };
        for i in 0..g.len() {
            let (x, y) = (g[i] as f64, u[i] as f64);
            let want = x / (1.0 + (-x).exp()) * y;
            assert!((out[i] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()));
        }
        let mut buf = uninit_buffer(g.len());
        gelu_tanh_mul(&g, &u, &mut buf);
        // SAFETY: gelu_tanh_mul wrote every element.
        let out = unsafe { assume_init(buf) };
        for i in 0..g.len() {
            let (x, y) = (g[i] as f64, u[i] as f64);
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            let want = 0.5 * x * (1.0 + inner.tanh()) * y;
            assert!((out[i] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()));
        }
    }
}
