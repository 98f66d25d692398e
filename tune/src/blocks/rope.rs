//! Rotary position embeddings (the non-interleaved "rotate half" form the Hub's Llama and Gemma
//! use), configured from `config.json`.

use candle_core::{Device, Result, Tensor, D};

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
}

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
        for row in rows {
            for &p in row {
                for &f in &self.inv_freq {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
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
    pub cos: std::sync::Arc<Vec<f32>>,
    pub sin: std::sync::Arc<Vec<f32>>,
    /// One table per sequence (else one shared by all).
    pub batched: bool,
    pub t: usize,
    pub half: usize,
}

impl RopeTables {
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

    /// Rotates, in place, the `heads` heads of `2 * half` values at the start of `row`, the
    /// token of flat row index `row_index` (`batch * t + position`); the same arithmetic as
    /// [`rope_thd`].
    pub fn rotate_in_place(&self, row_index: usize, row: &mut [f32], heads: usize) {
        let (bi, ti) = (row_index / self.t, row_index % self.t);
        let half = self.half;
        let base = (if self.batched { bi * self.t } else { 0 } + ti) * half;
        let (cos, sin) = (&self.cos[base..base + half], &self.sin[base..base + half]);
        #[cfg(target_arch = "x86_64")]
        if super::fastmath::has_avx512() {
            // SAFETY: the CPU supports the features the function was compiled for.
            return unsafe { rotate_heads_avx512(row, heads, cos, sin) };
        }
        rotate_heads(row, heads, cos, sin)
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

/// [`rotate_heads`] compiled for AVX-512 (the same operations, so the same values).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")]
unsafe fn rotate_heads_avx512(row: &mut [f32], heads: usize, cos: &[f32], sin: &[f32]) {
    rotate_heads(row, heads, cos, sin)
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
        let mut out = super::fastmath::uninit_buffer(x.len());
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
        let out = unsafe { super::fastmath::assume_init(out) };
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
