//! Rotary position embeddings (the non-interleaved "rotate half" form the Hub's Llama and Gemma
//! use), configured from `config.json`.

use std::sync::{Arc, Mutex};

use candle_core::{Device, Result, Tensor, TensorId, D};

use crate::config::JsonConfig;

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub head_dim: usize,
    pub scaling: RopeScaling,
}

impl RopeConfig {
    /// Reads transformers v5's `rope_parameters` ({rope_theta, rope_type, ...}), falling back to
    /// v4's top-level `rope_theta` / `rope_scaling`, and only then to the family default.
    pub fn from_config(
        cfg: &JsonConfig,
        head_dim: usize,
        default_theta: f64,
    ) -> crate::Result<Self> {
        let params = if cfg.has("rope_parameters") {
            Some(cfg.sub("rope_parameters")?)
        } else if cfg.has("rope_scaling") {
            Some(cfg.sub("rope_scaling")?)
        } else {
            None
        };
        let theta = match params
            .as_ref()
            .map(|p| p.opt_f64("rope_theta"))
            .transpose()?
            .flatten()
        {
            Some(t) => t,
            None => cfg.opt_f64("rope_theta")?.unwrap_or(default_theta),
        };
        if !(theta.is_finite() && theta > 0.0) {
            return Err(cfg.field_error(
                "rope_parameters.rope_theta",
                format!("must be > 0, got {theta}"),
            ));
        }
        let mut scaling = RopeScaling::None;
        if let Some(p) = &params {
            let ty = match p.opt_str("rope_type")? {
                Some(t) => Some(t),
                None => p.opt_str("type")?,
            };
            scaling = match ty.as_deref() {
                None | Some("default") => RopeScaling::None,
                Some("linear") => RopeScaling::Linear {
                    factor: p.f64("factor")?,
                },
                Some("llama3") => RopeScaling::Llama3 {
                    factor: p.f64("factor")?,
                    low_freq_factor: p.f64("low_freq_factor")?,
                    high_freq_factor: p.f64("high_freq_factor")?,
                    original_max_position_embeddings: p.f64("original_max_position_embeddings")?,
                },
                Some(other) => {
                    return Err(p.field_error(
                        "rope_type",
                        format!(
                            "unsupported rope_type `{other}` (supported: default, linear, llama3)"
                        ),
                    ))
                }
            };
        }
        Ok(Self {
            theta,
            head_dim,
            scaling,
        })
    }
}

#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    /// Inverse frequencies, f32 as transformers computes them.
    inv_freq: Vec<f32>,
    device: Device,
    /// cos and sin of positions `0..len`, `[len, d/2]` each, grown on demand: a 256-token
    /// forward pass spent a third of a millisecond in scalar `sin` / `cos` recomputing them.
    table: Arc<Mutex<(Vec<f32>, Vec<f32>)>>,
}

/// Positions past this are computed on each call rather than kept in the table.
const TABLE_MAX_POSITIONS: usize = 1 << 16;

impl RotaryEmbedding {
    pub fn new(cfg: &RopeConfig, device: &Device) -> Self {
        let half = cfg.head_dim / 2;
        let d = cfg.head_dim as f32;
        let mut inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0f32 / (cfg.theta as f32).powf((2 * i) as f32 / d))
            .collect();
        match cfg.scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                for f in inv_freq.iter_mut() {
                    *f /= factor as f32;
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let low_wavelen = original_max_position_embeddings / low_freq_factor;
                let high_wavelen = original_max_position_embeddings / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let freq = *f as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    let new = if wavelen > low_wavelen {
                        freq / factor
                    } else if wavelen < high_wavelen {
                        freq
                    } else {
                        let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * freq / factor + smooth * freq
                    };
                    *f = new as f32;
                }
            }
        }
        Self {
            inv_freq,
            device: device.clone(),
            table: Arc::new(Mutex::new((Vec::new(), Vec::new()))),
        }
    }

    /// Appends cos and sin of `position` (at every frequency) to `cos` and `sin`.
    fn push_position(&self, position: i64, cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
        for &f in &self.inv_freq {
            let a = position as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }

    /// cos and sin for explicit positions, `[batch, seq]`; returns `[seq, d/2]` when every row
    /// has the same positions (the fused kernel's fast layout), else `[batch, seq, d/2]`.
    pub fn cos_sin(&self, positions: &[Vec<i64>]) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let same = positions.windows(2).all(|w| w[0] == w[1]);
        let rows: &[Vec<i64>] = if same && !positions.is_empty() {
            &positions[..1]
        } else {
            positions
        };
        let t = rows.first().map(|r| r.len()).unwrap_or(0);
        let mut cos = Vec::with_capacity(rows.len() * t * half);
        let mut sin = Vec::with_capacity(rows.len() * t * half);
        let top = rows.iter().flatten().copied().max().unwrap_or(0);
        let cached = half > 0
            && rows.iter().flatten().all(|&p| p >= 0)
            && (top as usize) < TABLE_MAX_POSITIONS;
        let mut table = if cached { self.table.lock().ok() } else { None };
        if let Some(tab) = table.as_deref_mut() {
            let (tc, ts) = (&mut tab.0, &mut tab.1);
            for p in (tc.len() / half) as i64..=top {
                self.push_position(p, tc, ts);
            }
        }
        for row in rows {
            for &p in row {
                match table.as_deref() {
                    Some((tc, ts)) => {
                        let at = p as usize * half;
                        cos.extend_from_slice(&tc[at..at + half]);
                        sin.extend_from_slice(&ts[at..at + half]);
                    }
                    None => self.push_position(p, &mut cos, &mut sin),
                }
            }
        }
        drop(table);
        let (cos, sin) = if same {
            (
                Tensor::from_vec(cos, (t, half), &self.device)?,
                Tensor::from_vec(sin, (t, half), &self.device)?,
            )
        } else {
            (
                Tensor::from_vec(cos, (rows.len(), t, half), &self.device)?,
                Tensor::from_vec(sin, (rows.len(), t, half), &self.device)?,
            )
        };
        Ok((cos, sin))
    }

    /// Positions `start..start+len` for every row.
    pub fn cos_sin_range(&self, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        let row: Vec<i64> = (start as i64..(start + len) as i64).collect();
        self.cos_sin(&[row])
    }
}

/// Applies the rotation to `x: [batch, heads, seq, head_dim]`.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let cos = cos.to_dtype(x.dtype())?;
    let sin = sin.to_dtype(x.dtype())?;
    if x.track_op() {
        let (c, s) = if cos.rank() == 2 {
            (
                cos.unsqueeze(0)?.unsqueeze(0)?,
                sin.unsqueeze(0)?.unsqueeze(0)?,
            )
        } else {
            (cos.unsqueeze(1)?, sin.unsqueeze(1)?)
        };
        let c = Tensor::cat(&[&c, &c], D::Minus1)?;
        let s = Tensor::cat(&[&s, &s], D::Minus1)?;
        let d = x.dim(D::Minus1)?;
        let x1 = x.narrow(D::Minus1, 0, d / 2)?;
        let x2 = x.narrow(D::Minus1, d / 2, d - d / 2)?;
        let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&c)? + rot.broadcast_mul(&s)?
    } else {
        let x = if x.is_contiguous() {
            x.clone()
        } else {
            x.contiguous()?
        };
        candle_nn::rotary_emb::rope(&x, &cos, &sin)
    }
}

/// Rotary embedding of `x: [batch, seq, heads, head_dim]` (the projections' own layout), with a
/// backward pass: the rotation is orthogonal, so the input's gradient is the output's gradient
/// rotated back (`sin` negated). candle's rope kernels have no backward.
pub fn rope_thd(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, t, _, d) = x.dims4()?;
    let tables = RopeTables::new(cos, sin, b, t, d)?;
    let op = RopeThd {
        cos: tables.cos,
        sin: tables.sin,
        batched: tables.batched,
        sign: 1.0,
    };
    x.contiguous()?.apply_op1(op)
}

/// The cos / sin tables of `b` sequences of `t` positions as flat f32 rows of `d / 2`.
#[derive(Clone)]
pub struct RopeTables {
    /// `[1 or batch, seq, d/2]`, flattened.
    pub cos: Arc<Vec<f32>>,
    pub sin: Arc<Vec<f32>>,
    /// One table per sequence (else one shared by all).
    pub batched: bool,
    pub t: usize,
    pub half: usize,
}

impl RopeTables {
    /// [`RopeTables::new`], read once per pair of tensors: every layer of a forward pass
    /// rotates with the same cos / sin.
    pub fn of(cos: &Tensor, sin: &Tensor, b: usize, t: usize, d: usize) -> Result<Self> {
        type Key = (TensorId, TensorId, usize, usize, usize);
        static LAST: Mutex<Option<(Key, RopeTables)>> = Mutex::new(None);
        let key = (cos.id(), sin.id(), b, t, d);
        if let Ok(last) = LAST.lock() {
            if let Some((k, tables)) = last.as_ref() {
                if *k == key {
                    return Ok(tables.clone());
                }
            }
        }
        let tables = Self::new(cos, sin, b, t, d)?;
        if let Ok(mut last) = LAST.lock() {
            *last = Some((key, tables.clone()));
        }
        Ok(tables)
    }

    /// From `cos` / `sin` shaped `[seq, d/2]` or `[1 or b, seq, d/2]` (at least `t` positions).
    pub fn new(cos: &Tensor, sin: &Tensor, b: usize, t: usize, d: usize) -> Result<Self> {
        let table = |c: &Tensor| -> Result<Vec<f32>> {
            let c = c.to_dtype(candle_core::DType::F32)?;
            let c = if c.rank() == 2 {
                c.narrow(0, 0, t)?.unsqueeze(0)?
            } else {
                c.narrow(1, 0, t)?
            };
            if c.dims() != [c.dim(0)?, t, d / 2] || (c.dim(0)? != 1 && c.dim(0)? != b) {
                candle_core::bail!(
                    "rope: cos/sin {:?} for {b} sequences of {t} positions, head_dim {d}",
                    c.dims()
                );
            }
            c.flatten_all()?.to_vec1::<f32>()
        };
        Ok(Self {
            cos: std::sync::Arc::new(table(cos)?),
            sin: std::sync::Arc::new(table(sin)?),
            batched: cos.rank() == 3 && cos.dim(0)? == b && b > 1,
            t,
            half: d / 2,
        })
    }

    /// Rotates, in place, rows `rows` of a row-major block: row `r` (the token of flat index
    /// `batch * t + position`) starts at `first + r * stride` and holds `heads` heads of
    /// `2 * half` values from there; the same arithmetic as [`rope_thd`]. One dispatch for the
    /// block: per row, the checks cost as much as the rotation.
    ///
    /// # Safety
    /// Every row's `heads * 2 * half` floats from its start must be valid for reads and writes,
    /// and no other thread may touch them meanwhile.
    pub unsafe fn rotate_block(
        &self,
        first: *mut f32,
        stride: usize,
        rows: std::ops::Range<usize>,
        heads: usize,
    ) {
        let each = |r: usize| {
            let (bi, ti) = (r / self.t, r % self.t);
            let base = (if self.batched { bi * self.t } else { 0 } + ti) * self.half;
            // SAFETY: forwarded from the caller.
            let row = unsafe {
                std::slice::from_raw_parts_mut(first.add(r * stride), heads * 2 * self.half)
            };
            (
                row,
                &self.cos[base..base + self.half],
                &self.sin[base..base + self.half],
            )
        };
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::fastmath::has_avx512() {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { rotate_rows_avx512(rows, heads, &each) };
        }
        for r in rows {
            let (row, cos, sin) = each(r);
            rotate_heads(row, heads, cos, sin);
        }
    }
}

/// The rows of [`RopeTables::rotate_block`], compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")]
unsafe fn rotate_rows_avx512<'a>(
    rows: std::ops::Range<usize>,
    heads: usize,
    each: &dyn Fn(usize) -> (&'a mut [f32], &'a [f32], &'a [f32]),
) {
    for r in rows {
        let (row, cos, sin) = each(r);
        rotate_heads(row, heads, cos, sin);
    }
}

/// Rotates the first `heads` heads of `2 * cos.len()` values of `row`.
#[inline(always)]
fn rotate_heads(row: &mut [f32], heads: usize, cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for head in row.chunks_exact_mut(2 * half).take(heads) {
        let (x1, x2) = head.split_at_mut(half);
        for (((x1, x2), &c), &s) in x1.iter_mut().zip(x2.iter_mut()).zip(cos).zip(sin) {
            let (a, b) = (*x1, *x2);
            *x1 = a * c - b * s;
            *x2 = a * s + b * c;
        }
    }
}

#[derive(Clone)]
struct RopeThd {
    /// `[1 or batch, seq, d/2]`, flattened.
    cos: std::sync::Arc<Vec<f32>>,
    sin: std::sync::Arc<Vec<f32>>,
    batched: bool,
    /// -1 rotates back (the backward pass).
    sign: f32,
}

impl candle_core::CustomOp1 for RopeThd {
    fn name(&self) -> &'static str {
        "rope-thd"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let candle_core::CpuStorage::F32(v) = s else {
            candle_core::bail!("rope: f32 only");
        };
        let Some((a, e)) = l.contiguous_offsets() else {
            candle_core::bail!("rope: input must be contiguous");
        };
        let x = &v[a..e];
        let (_, t, h, d) = l.shape().dims4()?;
        let half = d / 2;
        if d % 2 != 0 {
            candle_core::bail!("rope: head_dim {d} must be even");
        }
        if d == 0 || x.is_empty() {
            return Ok((candle_core::CpuStorage::F32(Vec::new()), l.shape().clone()));
        }
        let mut out = crate::kernels::fastmath::uninit_buffer(x.len());
        let rotate = |row: usize, o: &mut [std::mem::MaybeUninit<f32>], x: &[f32]| {
            let (bi, ti) = (row / t, row % t);
            let base = (if self.batched { bi * t } else { 0 } + ti) * half;
            let (cos, sin) = (&self.cos[base..base + half], &self.sin[base..base + half]);
            for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                let (o1, o2) = o.split_at_mut(half);
                let (x1, x2) = x.split_at(half);
                for i in 0..half {
                    let (c, s) = (cos[i], self.sign * sin[i]);
                    o1[i].write(x1[i] * c - x2[i] * s);
                    o2[i].write(x1[i] * s + x2[i] * c);
                }
            }
        };
        // A control loop's few hundred rows take microseconds: waking threads would cost more.
        if x.len() <= 1 << 18 {
            for (row, (o, x)) in out.chunks_mut(h * d).zip(x.chunks(h * d)).enumerate() {
                rotate(row, o, x);
            }
        } else {
            use rayon::prelude::*;
            out.par_chunks_mut(h * d)
                .zip(x.par_chunks(h * d))
                .enumerate()
                .for_each(|(row, (o, x))| rotate(row, o, x));
        }
        // SAFETY: every row's `h` heads of `d` values were written above (d is even, so the
        // two halves cover each head; the tables were checked against d / 2).
        let out = unsafe { crate::kernels::fastmath::assume_init(out) };
        Ok((candle_core::CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = RopeThd {
            sign: -self.sign,
            ..self.clone()
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached table gives exactly the directly computed values, whatever order positions
    /// arrive in, as it grows, and for positions it does not cache.
    #[test]
    fn cached_cos_sin_equal_the_direct_values() {
        let rope = RotaryEmbedding::new(
            &RopeConfig {
                theta: 10_000.0,
                head_dim: 8,
                scaling: RopeScaling::None,
            },
            &Device::Cpu,
        );
        let direct = |rows: &[Vec<i64>]| -> (Vec<f32>, Vec<f32>) {
            let (mut c, mut s) = (Vec::new(), Vec::new());
            for &p in rows.iter().flatten() {
                for &f in &rope.inv_freq {
                    c.push((p as f32 * f).cos());
                    s.push((p as f32 * f).sin());
                }
            }
            (c, s)
        };
        let calls: Vec<Vec<Vec<i64>>> = vec![
            vec![(0..5).collect()],
            vec![(3..40).collect(), (10..47).collect()],
            vec![vec![200, 7, 0, 199]],
            vec![vec![-3, 2, 70_000]],
        ];
        for rows in &calls {
            let (c, s) = rope.cos_sin(rows).expect("cos/sin");
            let flat = |t: Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>());
            let (want_c, want_s) = direct(rows);
            assert_eq!(flat(c).expect("cos"), want_c, "positions {rows:?}");
            assert_eq!(flat(s).expect("sin"), want_s, "positions {rows:?}");
        }
    }
}
