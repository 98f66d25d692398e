//! LoRA adapters attached to linear layers: `y = W x + s * B A x` with s = alpha / r
//! (or alpha / sqrt(r) for rsLoRA). Several adapters may be loaded on a layer; one is active.

use std::sync::{Arc, Mutex};

use candle_core::{Result, Tensor};

use crate::train::Rng;

/// Dropout on the adapter's input while training, drawing from a generator the trainer owns
/// (and checkpoints), so runs are reproducible and resumable.
#[derive(Debug, Clone)]
pub struct LoraDropout {
    pub p: f32,
    pub rng: Arc<Mutex<Rng>>,
}

#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// `[r, in]` (PEFT's `lora_A.weight`).
    pub a: Tensor,
    /// `[out, r]` (PEFT's `lora_B.weight`).
    pub b: Tensor,
    pub scaling: f64,
    /// Applied only while the adapter is being trained (its weights are tracked).
    pub dropout: Option<LoraDropout>,
}

impl LoraAdapter {
    pub fn rank(&self) -> usize {
        self.a.dims().first().copied().unwrap_or(0)
    }

    /// The dense update `s * B A`, `[out, in]`.
    pub fn delta_weight(&self) -> Result<Tensor> {
        self.b.matmul(&self.a)? * self.scaling
    }

    /// `y + s * B (A x)`, computed through the rank-r bottleneck.
    pub fn add_delta(&self, x: &Tensor, y: Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = *dims.last().unwrap_or(&0);
        let lead: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        let mut x2 = x.reshape((lead, in_dim))?;
        if let Some(d) = &self.dropout {
            if d.p > 0.0 && self.a.track_op() {
                let keep = 1.0 - d.p;
                let mask: Vec<f32> = {
                    let mut rng = d
                        .rng
                        .lock()
                        .map_err(|_| candle_core::Error::Msg("dropout rng poisoned".into()))?;
                    (0..lead * in_dim)
                        .map(|_| {
                            if (rng.next_f64() as f32) < keep {
                                1.0 / keep
                            } else {
                                0.0
                            }
                        })
                        .collect()
                };
                let mask =
                    Tensor::from_vec(mask, (lead, in_dim), x.device())?.to_dtype(x.dtype())?;
                x2 = (x2 * mask)?;
            }
        }
        let h = x2.matmul(&self.a.t()?)?;
        let d = (h.matmul(&self.b.t()?)? * self.scaling)?;
        let d = d.reshape(y.shape())?;
        y + d
    }
}

/// The adapters of one linear layer, by name, with at most one active.
#[derive(Debug, Clone, Default)]
pub struct LoraSlot {
    adapters: Vec<(String, LoraAdapter)>,
    active: Option<usize>,
    /// Name of the adapter currently folded into the base weight, if any.
    merged: Option<String>,
}

impl LoraSlot {
    /// The adapter the forward pass adds (none while an adapter is merged into the weight).
    pub fn active(&self) -> Option<&LoraAdapter> {
        if self.merged.is_some() {
            return None;
        }
        self.active
            .and_then(|i| self.adapters.get(i))
            .map(|(_, a)| a)
    }

    pub fn merged(&self) -> Option<&str> {
        self.merged.as_deref()
    }

    pub fn set_merged(&mut self, name: Option<String>) {
        self.merged = name;
    }

    pub fn is_empty(&self) -> bool {
        self.adapters.is_empty()
    }

    /// The adapter selected as active, whether or not it is merged.
    pub fn selected(&self) -> Option<&LoraAdapter> {
        self.active
            .and_then(|i| self.adapters.get(i))
            .map(|(_, a)| a)
    }

    pub fn active_name(&self) -> Option<&str> {
        self.active
            .and_then(|i| self.adapters.get(i))
            .map(|(n, _)| n.as_str())
    }

    pub fn insert(&mut self, name: &str, adapter: LoraAdapter) {
        if let Some(slot) = self.adapters.iter_mut().find(|(n, _)| n == name) {
            slot.1 = adapter;
        } else {
            self.adapters.push((name.to_string(), adapter));
        }
    }

    pub fn get(&self, name: &str) -> Option<&LoraAdapter> {
        self.adapters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut LoraAdapter> {
        self.adapters
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }

    /// Makes `name` the active adapter (None: no adapter). Returns false if it is not loaded.
    pub fn activate(&mut self, name: Option<&str>) -> bool {
        match name {
            None => {
                self.active = None;
                true
            }
            Some(n) => match self.adapters.iter().position(|(a, _)| a == n) {
                Some(i) => {
                    self.active = Some(i);
                    true
                }
                None => false,
            },
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<LoraAdapter> {
        let i = self.adapters.iter().position(|(n, _)| n == name)?;
        let active_name = self.active_name().map(str::to_string);
        let (_, a) = self.adapters.remove(i);
        self.active = active_name.and_then(|an| self.adapters.iter().position(|(n, _)| *n == an));
        Some(a)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.adapters.iter().map(|(n, _)| n.as_str())
    }
}
