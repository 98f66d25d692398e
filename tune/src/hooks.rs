//! Named hook points in the TransformerLens style (`blocks.{l}.mlp.act`, `blocks.{l}.resid_post`,
//! `blocks.{l}.attn.head_out`, ...), where activations are captured or overwritten.
//!
//! Models call [`Hooks::apply`] only when a `Hooks` is passed in, and a `Hooks` with nothing
//! registered at a point returns the tensor untouched after one hash lookup, so the mechanism
//! costs nothing measurable when idle.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::error::{Result, TuneError};

/// Which stack of blocks a hook point belongs to. Vision-language models have two stacks; the
/// language model's keeps the plain `blocks.` names so tools written for LMs work unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tower {
    Main,
    Vision,
    /// The action expert of flow-matching VLAs.
    Expert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    /// Input of the MLP (after the pre-MLP norm).
    MlpIn,
    /// Input of the down projection: act(gate) * up, or act(fc1) — what steering sets.
    MlpAct,
    /// Output of the MLP.
    MlpOut,
    /// Per-head attention output before the output projection, `[batch, heads, seq, head_dim]`.
    AttnHeadOut,
    /// The residual stream after the block.
    ResidPost,
}

impl Site {
    fn suffix(self) -> &'static str {
        match self {
            Site::MlpIn => "mlp.in",
            Site::MlpAct => "mlp.act",
            Site::MlpOut => "mlp.out",
            Site::AttnHeadOut => "attn.head_out",
            Site::ResidPost => "resid_post",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HookPoint {
    pub tower: Tower,
    pub layer: usize,
    pub site: Site,
}

impl HookPoint {
    pub fn new(layer: usize, site: Site) -> Self {
        Self {
            tower: Tower::Main,
            layer,
            site,
        }
    }

    pub fn name(&self) -> String {
        let tower = match self.tower {
            Tower::Main => "",
            Tower::Vision => "vision.",
            Tower::Expert => "expert.",
        };
        format!("{tower}blocks.{}.{}", self.layer, self.site.suffix())
    }

    /// Parses `blocks.3.mlp.act`, `vision.blocks.0.resid_post`, `expert.blocks.1.attn.head_out`.
    pub fn parse(name: &str) -> Result<Self> {
        let bad = || {
            TuneError::Invalid(format!(
                "hook point `{name}`: expected [vision.|expert.]blocks.<layer>.<mlp.in|mlp.act|mlp.out|attn.head_out|resid_post>"
            ))
        };
        let (tower, rest) = if let Some(r) = name.strip_prefix("vision.") {
            (Tower::Vision, r)
        } else if let Some(r) = name.strip_prefix("expert.") {
            (Tower::Expert, r)
        } else {
            (Tower::Main, name)
        };
        let rest = rest.strip_prefix("blocks.").ok_or_else(bad)?;
        let (layer, site) = rest.split_once('.').ok_or_else(bad)?;
        let layer: usize = layer.parse().map_err(|_| bad())?;
        let site = match site {
            "mlp.in" => Site::MlpIn,
            "mlp.act" => Site::MlpAct,
            "mlp.out" => Site::MlpOut,
            "attn.head_out" => Site::AttnHeadOut,
            "resid_post" => Site::ResidPost,
            _ => return Err(bad()),
        };
        Ok(Self { tower, layer, site })
    }
}

/// What a hook does to the activation flowing through its point.
#[derive(Debug, Clone)]
pub enum HookAction {
    /// Keep a copy, readable afterwards with [`Hooks::captured`].
    Capture,
    /// Set the listed features of the last dimension to `value` at every position (steering's
    /// Eq. 2 when used on `mlp.act`).
    SetNeurons { indices: Vec<usize>, value: f32 },
    /// Add a vector over the last dimension at every position (`resid_post`).
    AddVector(Tensor),
    /// Add one offset per head, `[heads, head_dim]`, to `attn.head_out`.
    AddPerHead(Tensor),
}

#[derive(Debug, Default)]
pub struct Hooks {
    actions: HashMap<HookPoint, Vec<HookAction>>,
    captured: HashMap<HookPoint, Tensor>,
}

impl Hooks {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// Whether any action is registered at `point`.
    pub fn has(&self, point: &HookPoint) -> bool {
        self.actions.contains_key(point)
    }

    pub fn add(&mut self, point: HookPoint, action: HookAction) -> &mut Self {
        self.actions.entry(point).or_default().push(action);
        self
    }

    pub fn add_named(&mut self, name: &str, action: HookAction) -> Result<&mut Self> {
        let p = HookPoint::parse(name)?;
        Ok(self.add(p, action))
    }

    pub fn capture(&mut self, point: HookPoint) -> &mut Self {
        self.add(point, HookAction::Capture)
    }

    pub fn clear(&mut self) {
        self.actions.clear();
        self.captured.clear();
    }

    /// Replaces the actions at a point (used to change a steering value between calls).
    pub fn set(&mut self, point: HookPoint, actions: Vec<HookAction>) {
        if actions.is_empty() {
            self.actions.remove(&point);
        } else {
            self.actions.insert(point, actions);
        }
    }

    pub fn captured(&self, point: &HookPoint) -> Option<&Tensor> {
        self.captured.get(point)
    }

    pub fn take_captured(&mut self) -> HashMap<HookPoint, Tensor> {
        std::mem::take(&mut self.captured)
    }

    /// Runs the actions registered at `point` on `x`.
    pub fn apply(&mut self, point: HookPoint, x: Tensor) -> candle_core::Result<Tensor> {
        let Some(actions) = self.actions.get(&point) else {
            return Ok(x);
        };
        let mut x = x;
        // Whether another handle to x's storage may exist (a capture shares it).
        let mut shared = false;
        for a in actions {
            match a {
                HookAction::Capture => {
                    self.captured.insert(point, x.clone());
                    shared = true;
                }
                HookAction::SetNeurons { indices, value } => {
                    // `mlp.act` is a fresh product nothing else holds: overwrite the chosen
                    // columns in place (touching rows x k values) instead of two full passes.
                    let in_place = point.site == Site::MlpAct
                        && !shared
                        && x.device().is_cpu()
                        && !x.track_op()
                        && x.is_contiguous()
                        && matches!(x.dtype(), DType::F32 | DType::F64);
                    if in_place {
                        x.inplace_op1(&SetColumns {
                            indices,
                            value: *value,
                        })?;
                    } else {
                        x = set_features(&x, indices, *value)?;
                    }
                }
                HookAction::AddVector(v) => {
                    let v = v.to_dtype(x.dtype())?.to_device(x.device())?;
                    x = x.broadcast_add(&v)?;
                }
                HookAction::AddPerHead(off) => {
                    let (h, d) = off.dims2()?;
                    let off = off
                        .to_dtype(x.dtype())?
                        .to_device(x.device())?
                        .reshape((1, h, 1, d))?;
                    x = x.broadcast_add(&off)?;
                }
            }
        }
        Ok(x)
    }
}

/// Sets last-dimension columns `indices` to `value` in a contiguous CPU tensor, in place.
struct SetColumns<'a> {
    indices: &'a [usize],
    value: f32,
}

impl SetColumns<'_> {
    fn fill<T: Copy>(&self, data: &mut [T], n: usize, v: T) -> candle_core::Result<()> {
        if let Some(&i) = self.indices.iter().find(|&&i| i >= n) {
            candle_core::bail!("hook: neuron index {i} out of range for width {n}");
        }
        for row in data.chunks_exact_mut(n) {
            for &i in self.indices {
                row[i] = v;
            }
        }
        Ok(())
    }
}

impl candle_core::InplaceOp1 for SetColumns<'_> {
    fn name(&self) -> &'static str {
        "set-columns"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("set-columns: needs a contiguous tensor");
        };
        let n = layout.dims().last().copied().unwrap_or(1).max(1);
        match storage {
            candle_core::CpuStorage::F32(d) => self.fill(&mut d[start..end], n, self.value),
            candle_core::CpuStorage::F64(d) => {
                self.fill(&mut d[start..end], n, f64::from(self.value))
            }
            _ => candle_core::bail!("set-columns: f32 or f64 only"),
        }
    }
}

/// x with its last-dimension features `indices` replaced by `value` everywhere.
fn set_features(x: &Tensor, indices: &[usize], value: f32) -> candle_core::Result<Tensor> {
    let n = x.dim(candle_core::D::Minus1)?;
    let mut keep = vec![1f32; n];
    for &i in indices {
        if i >= n {
            candle_core::bail!("hook: neuron index {i} out of range for width {n}");
        }
        keep[i] = 0.0;
    }
    let set: Vec<f32> = keep.iter().map(|k| (1.0 - k) * value).collect();
    let dev: &Device = x.device();
    let keep = Tensor::from_vec(keep, n, dev)?.to_dtype(x.dtype())?;
    let set = Tensor::from_vec(set, n, dev)?.to_dtype(x.dtype())?;
    x.broadcast_mul(&keep)?.broadcast_add(&set)
}
