//! The multi-layer perceptron the critic and actor heads are built from: `Linear` layers, each
//! hidden one followed by an optional LayerNorm and a ReLU.

use candle_core::Tensor;
use candle_nn::{Module, VarBuilder};

use crate::blocks::LayerNorm;
use crate::error::{Context, Result, TuneError};

/// LayerNorm epsilon (PyTorch's default).
pub const LN_EPS: f64 = 1e-5;

/// `in -> hidden[0] -> ... -> out`. Variable names under the builder's prefix: `fc{j}.weight`
/// `[hidden[j], in_j]` and `fc{j}.bias`, `ln{j}.weight` / `ln{j}.bias` when `layer_norm`, and
/// `out.weight` / `out.bias`. Layers hold the variables' own tensors, so an optimiser step
/// is seen by the next forward pass.
#[derive(Debug, Clone)]
pub struct Mlp {
    hidden: Vec<(candle_nn::Linear, Option<LayerNorm>)>,
    out: candle_nn::Linear,
    in_dim: usize,
    out_dim: usize,
}

fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<candle_nn::Linear> {
    let w = vb.get((out_dim, in_dim), "weight")?;
    let b = vb.get(out_dim, "bias")?;
    Ok(candle_nn::Linear::new(w, Some(b)))
}

impl Mlp {
    pub fn new(
        in_dim: usize,
        hidden: &[usize],
        out_dim: usize,
        layer_norm: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        if in_dim == 0 || out_dim == 0 || hidden.contains(&0) {
            return Err(TuneError::input(
                "mlp sizes",
                format!("in {in_dim}, hidden {hidden:?}, out {out_dim}: every size must be > 0"),
            ));
        }
        let prefix = vb.prefix();
        let what = |name: String| format!("building the MLP `{prefix}`: {name}");
        let mut layers = Vec::with_capacity(hidden.len());
        let mut d = in_dim;
        for (j, &h) in hidden.iter().enumerate() {
            let fc = linear(d, h, vb.pp(format!("fc{j}"))).context(what(format!("fc{j}")))?;
            let ln = if layer_norm {
                Some(
                    LayerNorm::new(h, LN_EPS, vb.pp(format!("ln{j}")))
                        .context(what(format!("ln{j}")))?,
                )
            } else {
                None
            };
            layers.push((fc, ln));
            d = h;
        }
        let out = linear(d, out_dim, vb.pp("out")).context(what("out".into()))?;
        Ok(Self {
            hidden: layers,
            out,
            in_dim,
            out_dim,
        })
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// `x` `[B, in]` to `[B, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() != 2 || dims[1] != self.in_dim {
            return Err(TuneError::input(
                "mlp input",
                format!("shape {dims:?}, expected [B, {}]", self.in_dim),
            ));
        }
        let mut h = x.clone();
        for (j, (fc, ln)) in self.hidden.iter().enumerate() {
            let what = || format!("MLP layer {j}");
            h = fc.forward(&h).context(what())?;
            if let Some(ln) = ln {
                h = ln.forward(&h).context(what())?;
            }
            h = h.relu().context(what())?;
        }
        self.out.forward(&h).context("MLP output layer")
    }
}
