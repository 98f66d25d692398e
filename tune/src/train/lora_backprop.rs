//! A hand-written forward and backward pass for LoRA training of a decoder on CPU f32.
//!
//! candle's autograd records every op, allocates each intermediate and its gradient, and
//! multiplies by transposed weight views that its gemm runs up to 1.8x slower than contiguous
//! ones; for a LoRA step, where only the small adapters learn, that bookkeeping costs more than
//! the arithmetic. This pass keeps both layouts of every frozen weight, fuses q/k/v and
//! gate/up into single matmuls, saves just what the backward needs, computes gradients for
//! the adapters alone, and gives each thread whole sequences of the batch (single-threaded
//! matmuls, no synchronisation inside a layer). `tune/tests/lora_backprop.rs` checks loss and
//! gradients against the autograd path, `tune/tests/lora.rs` against PEFT's; `SftTrainer` and `rudder bench llama --lora` use it where
//! [`LoraBackprop::new`] accepts the model, and autograd everywhere else.

use candle_core::{DType, Tensor, TensorId};
use rayon::prelude::*;

use super::lm_batch::{LmBatch, SftExample};
use crate::blocks::{Activation, Linear};
use crate::kernels::fastmath;
use crate::models::decoder::Decoder;
use crate::models::decoder_cpu::{matmul, rms_backward, rms_forward, Dims, Geometry};

/// Gradients of LoRA adapter weights, by the tensor they belong to.
#[derive(Debug, Default)]
pub struct LoraGrads {
    grads: Vec<(TensorId, Tensor)>,
}

impl LoraGrads {
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.grads
            .iter()
            .find(|(id, _)| *id == t.id())
            .map(|(_, g)| g)
    }

    /// In the order of `params` (None where a parameter is not an adapter weight).
    pub fn for_params(&self, params: &[(String, candle_core::Var)]) -> Vec<Option<Tensor>> {
        params
            .iter()
            .map(|(_, v)| self.get(v.as_tensor()).cloned())
            .collect()
    }
}

/// One frozen linear layer in both layouts.
struct Frozen {
    /// `[in, out]`: the forward right-hand side.
    wt: Vec<f32>,
    /// `[out, in]`: the backward right-hand side.
    w: Vec<f32>,
}

impl Frozen {
    /// Several layers side by side (`[in, sum out]` / `[sum out, in]`), so one matmul serves them.
    fn stacked(lins: &[&Linear]) -> candle_core::Result<Self> {
        let ws: Vec<Tensor> = lins.iter().map(|l| l.weight()).collect::<Result<_, _>>()?;
        let w = Tensor::cat(&ws, 0)?.contiguous()?;
        Ok(Self {
            wt: w.t()?.contiguous()?.flatten_all()?.to_vec1()?,
            w: w.flatten_all()?.to_vec1()?,
        })
    }
}

struct LayerWeights {
    norm1: Vec<f32>,
    norm2: Vec<f32>,
    qkv: Frozen,
    o: Frozen,
    gate_up: Frozen,
    down: Frozen,
}

/// An adapter's current values, read at each step (they change every optimizer step).
struct Adapter {
    a: Vec<f32>,
    b: Vec<f32>,
    rank: usize,
    scaling: f32,
    a_id: TensorId,
    b_id: TensorId,
    dims: (Vec<usize>, Vec<usize>),
}

impl Adapter {
    fn read(lin: &Linear) -> candle_core::Result<Option<Self>> {
        let Some(ad) = lin.lora.active() else {
            return Ok(None);
        };
        Ok(Some(Self {
            a: ad.a.flatten_all()?.to_vec1()?,
            b: ad.b.flatten_all()?.to_vec1()?,
            rank: ad.rank(),
            scaling: ad.scaling as f32,
            a_id: ad.a.id(),
            b_id: ad.b.id(),
            dims: (ad.a.dims().to_vec(), ad.b.dims().to_vec()),
        }))
    }
}

/// What can stop the hand-written pass; the caller falls back to autograd.
fn unsupported(dec: &Decoder) -> Option<String> {
    let c = &dec.cfg;
    if !dec.device().is_cpu() {
        return Some("not on the CPU".into());
    }
    if dec.embed_tokens.dtype() != DType::F32 {
        return Some("weights are not f32".into());
    }
    if !matches!(c.activation, Activation::Silu | Activation::GeluTanh) {
        return Some(format!("activation {:?}", c.activation));
    }
    if c.attention_bias || c.mlp_bias {
        return Some("biased projections".into());
    }
    if c.num_kv_heads == 0
        || !c.num_heads.is_multiple_of(c.num_kv_heads)
        || !c.head_dim.is_multiple_of(2)
    {
        return Some("head layout".into());
    }
    if dec.lm_head.lora.active().is_some() || dec.lm_head.lora.merged().is_some() {
        return Some("an adapter on lm_head".into());
    }
    for l in &dec.layers {
        if l.mlp.up.is_none() {
            return Some("an ungated MLP".into());
        }
        for lin in projections(l) {
            if lin.bias.is_some() || lin.weight_t().dtype() != DType::F32 {
                return Some("a biased or non-f32 projection".into());
            }
            if lin.lora.merged().is_some() {
                return Some("a merged adapter".into());
            }
            if let Some(ad) = lin.lora.active() {
                if ad.dropout.as_ref().is_some_and(|d| d.p > 0.0) {
                    return Some("LoRA dropout".into());
                }
                if ad.a.dtype() != DType::F32 || ad.b.dtype() != DType::F32 {
                    return Some("a non-f32 adapter".into());
                }
            }
        }
    }
    None
}

/// A layer's projections: q, k, v, o, gate, up (when gated) and down.
fn projections(l: &crate::models::decoder::DecoderLayer) -> impl Iterator<Item = &Linear> {
    let (a, m) = (&l.self_attn, &l.mlp);
    [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &m.gate]
        .into_iter()
        .chain(m.up.as_ref())
        .chain([&m.down])
}

/// Above this many frozen weights (2 GB per f32 copy) the copies are not made.
const MAX_COPIED_ELEMENTS: usize = 1 << 29;

/// The frozen weights of a decoder, prepared for [`LoraBackprop::loss_and_grads`].
pub struct LoraBackprop {
    layers: Vec<LayerWeights>,
    embed: Vec<f32>,
    lm_head: Frozen,
    final_norm: Vec<f32>,
    /// Ids of the frozen weight tensors this was built from: a step on a decoder whose base
    /// weights were swapped since is refused rather than silently using stale copies.
    base_ids: Vec<TensorId>,
    /// Scratch buffers kept between steps, one set per concurrent shard.
    pools: std::sync::Mutex<Vec<Vec<Vec<f32>>>>,
}

fn norm_weight(n: &crate::blocks::RmsNorm) -> candle_core::Result<Vec<f32>> {
    let w: Vec<f32> = n.weight.to_dtype(DType::F32)?.to_vec1()?;
    Ok(w.into_iter().map(|v| v + n.offset as f32).collect())
}

fn base_ids(dec: &Decoder) -> Vec<TensorId> {
    let mut ids = vec![
        dec.embed_tokens.id(),
        dec.lm_head.weight_t().id(),
        dec.norm.weight.id(),
    ];
    for l in &dec.layers {
        ids.extend(projections(l).map(|lin| lin.weight_t().id()));
        ids.push(l.input_layernorm.weight.id());
        ids.push(l.post_attention_layernorm.weight.id());
    }
    ids
}

impl LoraBackprop {
    /// Copies the decoder's frozen weights; `Err(reason)` when this pass does not cover the
    /// model (autograd does).
    pub fn new(dec: &Decoder) -> std::result::Result<Self, String> {
        if let Some(why) = unsupported(dec) {
            return Err(why);
        }
        // Two more copies of the frozen weights: fine for the small models trained here, not
        // for a multi-billion-parameter one.
        let elems = dec.embed_tokens.elem_count()
            + dec.lm_head.weight_t().elem_count()
            + dec
                .layers
                .iter()
                .map(|l| {
                    projections(l)
                        .map(|x| x.weight_t().elem_count())
                        .sum::<usize>()
                })
                .sum::<usize>();
        if elems > MAX_COPIED_ELEMENTS {
            return Err(format!(
                "{elems} frozen weights: copying them twice would take {} GB",
                (elems * 8) >> 30
            ));
        }
        Self::prepare(dec).map_err(|e| e.to_string())
    }

    /// Whether every trainable parameter is an active adapter weight of `dec` (so this pass
    /// computes all the gradients a step needs).
    pub fn covers(dec: &Decoder, params: &[(String, candle_core::Var)]) -> bool {
        let mut ids = Vec::new();
        for l in &dec.layers {
            for lin in projections(l) {
                if let Some(ad) = lin.lora.active() {
                    ids.push(ad.a.id());
                    ids.push(ad.b.id());
                }
            }
        }
        !params.is_empty()
            && params
                .iter()
                .all(|(_, v)| ids.contains(&v.as_tensor().id()))
    }

    fn prepare(dec: &Decoder) -> candle_core::Result<Self> {
        let layers = dec
            .layers
            .iter()
            .map(|l| {
                let a = &l.self_attn;
                let m = &l.mlp;
                let up =
                    m.up.as_ref()
                        .ok_or_else(|| candle_core::Error::Msg("ungated MLP".into()))?;
                Ok(LayerWeights {
                    norm1: norm_weight(&l.input_layernorm)?,
                    norm2: norm_weight(&l.post_attention_layernorm)?,
                    qkv: Frozen::stacked(&[&a.q_proj, &a.k_proj, &a.v_proj])?,
                    o: Frozen::stacked(&[&a.o_proj])?,
                    gate_up: Frozen::stacked(&[&m.gate, up])?,
                    down: Frozen::stacked(&[&m.down])?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            embed: dec.embed_tokens.flatten_all()?.to_vec1()?,
            lm_head: Frozen::stacked(&[&dec.lm_head])?,
            final_norm: norm_weight(&dec.norm)?,
            base_ids: base_ids(dec),
            pools: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Mean next-token cross-entropy of `batch` (as [`super::sft::causal_lm_loss`]) and its
    /// gradients with respect to every active adapter's A and B. Returns the loss and the
    /// number of counted tokens.
    pub fn loss_and_grads(
        &self,
        dec: &Decoder,
        batch: &[&SftExample],
        pad: u32,
    ) -> candle_core::Result<(f64, usize, LoraGrads)> {
        if let Some(why) = unsupported(dec) {
            candle_core::bail!(
                "lora-backprop: the decoder changed and is no longer covered: {why}"
            );
        }
        if base_ids(dec) != self.base_ids {
            candle_core::bail!(
                "lora-backprop: the decoder's base weights changed since it was prepared"
            );
        }
        let lm = LmBatch::new(batch, pad)?;
        let threads = rayon::current_num_threads().max(1);
        let shards = threads.min(lm.batch);
        if shards <= 1 {
            let (loss, grads) = Pass::new(self, dec, &lm, threads)?.run()?;
            return Ok((loss, lm.counted, grads));
        }
        // Each thread takes whole sequences through the whole pass with single-threaded
        // matmuls: no synchronisation between the ~30 operations of a layer, which on 2 cores
        // cost more than splitting each matmul gains.
        let parts: Vec<LmBatch> = (0..shards)
            .map(|i| lm.shard(i * lm.batch / shards..(i + 1) * lm.batch / shards))
            .collect();
        let results: Vec<candle_core::Result<(f64, LoraGrads)>> = parts
            .par_iter()
            .map(|part| Pass::new(self, dec, part, 1)?.run())
            .collect();
        let mut loss = 0f64;
        let mut total: Option<LoraGrads> = None;
        for r in results {
            let (l, g) = r?;
            loss += l;
            total = Some(match total {
                None => g,
                Some(mut acc) => {
                    for ((id, a), (id2, b)) in acc.grads.iter_mut().zip(g.grads) {
                        if *id != id2 {
                            candle_core::bail!("lora-backprop: shards disagree on adapters");
                        }
                        *a = (&*a + b)?;
                    }
                    acc
                }
            });
        }
        Ok((loss, lm.counted, total.unwrap_or_default()))
    }
}

/// The layer's adapters, in the order q, k, v, o, gate, up, down.
type LayerAdapters = [Option<Adapter>; 7];

/// What the forward pass keeps of one layer for the backward pass.
struct Saved {
    x_in: Vec<f32>,
    inv1: Vec<f32>,
    h1: Vec<f32>,
    /// After rotary embedding (q and k).
    qkv: Vec<f32>,
    /// `[b, heads, t, t]` attention probabilities.
    probs: Vec<f32>,
    attn: Vec<f32>,
    x_mid: Vec<f32>,
    inv2: Vec<f32>,
    h2: Vec<f32>,
    /// Pre-activation gate and up, `[n, 2f]`.
    gate_up: Vec<f32>,
    act: Vec<f32>,
    /// `X A^T` of each adapter, `[n, r]`.
    z: [Vec<f32>; 7],
}

struct Pass<'a> {
    w: &'a LoraBackprop,
    lm: &'a LmBatch,
    dims: Dims,
    geo: Geometry,
    eps: f32,
    act: Activation,
    embed_scale: Option<f32>,
    adapters: Vec<LayerAdapters>,
    threads: usize,
    /// Buffers of earlier steps (same shapes each step): no allocation, page faults or
    /// zero-filling for memory that is overwritten anyway.
    pool: std::sync::Mutex<Vec<Vec<f32>>>,
}

impl<'a> Pass<'a> {
    fn new(
        w: &'a LoraBackprop,
        dec: &Decoder,
        lm: &'a LmBatch,
        threads: usize,
    ) -> candle_core::Result<Self> {
        let c = &dec.cfg;
        let geo = Geometry::new(dec, lm.batch, lm.seq)?;
        let dims = geo.dims;
        if let Some(bad) = lm.ids.iter().find(|&&i| i as usize >= dims.vocab) {
            candle_core::bail!(
                "input_ids: token id {bad} is out of range for vocab_size {}",
                dims.vocab
            );
        }
        if let Some((t, _)) = lm
            .targets
            .iter()
            .zip(&lm.weights)
            .find(|(&t, &wt)| wt != 0.0 && t as usize >= dims.vocab)
        {
            candle_core::bail!(
                "cross-entropy: target id {t} outside the vocabulary of {}",
                dims.vocab
            );
        }
        let adapters = dec
            .layers
            .iter()
            .map(|l| {
                let a = &l.self_attn;
                let m = &l.mlp;
                let up =
                    m.up.as_ref()
                        .ok_or_else(|| candle_core::Error::Msg("ungated MLP".into()))?;
                Ok([
                    Adapter::read(&a.q_proj)?,
                    Adapter::read(&a.k_proj)?,
                    Adapter::read(&a.v_proj)?,
                    Adapter::read(&a.o_proj)?,
                    Adapter::read(&m.gate)?,
                    Adapter::read(up)?,
                    Adapter::read(&m.down)?,
                ])
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            w,
            lm,
            dims,
            geo,
            eps: c.rms_norm_eps as f32,
            act: c.activation,
            embed_scale: c.embed_scale.map(|s| s as f32),
            adapters,
            threads,
            pool: std::sync::Mutex::new(
                w.pools
                    .lock()
                    .ok()
                    .and_then(|mut p| p.pop())
                    .unwrap_or_default(),
            ),
        })
    }

    /// A buffer of `len` initialised floats with arbitrary contents (callers overwrite it).
    fn buf(&self, len: usize) -> Vec<f32> {
        if let Ok(mut pool) = self.pool.lock() {
            if let Some(i) = pool.iter().position(|v| v.len() == len) {
                return pool.swap_remove(i);
            }
        }
        vec![0f32; len]
    }

    fn zeroed(&self, len: usize) -> Vec<f32> {
        let mut v = self.buf(len);
        v.fill(0.0);
        v
    }

    fn copy(&self, src: &[f32]) -> Vec<f32> {
        let mut v = self.buf(src.len());
        v.copy_from_slice(src);
        v
    }

    fn give(&self, v: Vec<f32>) {
        if v.is_empty() {
            return;
        }
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(v);
        }
    }

    fn recycle(&self, s: Saved) {
        let Saved {
            x_in,
            inv1,
            h1,
            qkv,
            probs,
            attn,
            x_mid,
            inv2,
            h2,
            gate_up,
            act,
            z,
        } = s;
        for v in [
            x_in, inv1, h1, qkv, probs, attn, x_mid, inv2, h2, gate_up, act,
        ] {
            self.give(v);
        }
        for v in z {
            self.give(v);
        }
    }

    fn par(&self) -> gemm::Parallelism {
        if self.threads > 1 {
            gemm::Parallelism::Rayon(self.threads)
        } else {
            gemm::Parallelism::None
        }
    }

    fn run(&self) -> candle_core::Result<(f64, LoraGrads)> {
        let dm = self.dims;
        let (n, h) = (dm.n, dm.h);
        let mut x = self.buf(n * h);
        for (row, &id) in x.chunks_mut(h).zip(&self.lm.ids) {
            let e = &self.w.embed[id as usize * h..(id as usize + 1) * h];
            match self.embed_scale {
                Some(s) => row.iter_mut().zip(e).for_each(|(o, &v)| *o = v * s),
                None => row.copy_from_slice(e),
            }
        }
        let mut saved = Vec::with_capacity(self.w.layers.len());
        for (lw, ad) in self.w.layers.iter().zip(&self.adapters) {
            let (out, s) = self.layer_forward(x, lw, ad);
            saved.push(s);
            x = out;
        }
        // Final norm, LM head, loss.
        let mut inv_f = self.buf(n);
        let mut hf = self.buf(n * h);
        rms_forward(&x, &self.w.final_norm, self.eps, &mut hf, &mut inv_f);
        let v = dm.vocab;
        let mut logits = self.buf(n * v);
        self.mm(
            n,
            v,
            h,
            &hf,
            h,
            1,
            &self.w.lm_head.wt,
            v,
            1,
            &mut logits,
            v,
            false,
            1.0,
        );
        let loss = cross_entropy_in_place(&mut logits, v, &self.lm.targets, &self.lm.weights);
        let mut dhf = self.buf(n * h);
        self.mm(
            n,
            h,
            v,
            &logits,
            v,
            1,
            &self.w.lm_head.w,
            h,
            1,
            &mut dhf,
            h,
            false,
            1.0,
        );
        self.give(logits);
        let mut dx = self.zeroed(n * h);
        rms_backward(&x, &inv_f, &self.w.final_norm, &dhf, &mut dx);
        let mut grads = LoraGrads::default();
        for (i, (lw, ad)) in self.w.layers.iter().zip(&self.adapters).enumerate().rev() {
            let s = saved
                .pop()
                .ok_or_else(|| candle_core::Error::Msg("saved".into()))?;
            dx = self.layer_backward(dx, lw, ad, &s, i > 0, &mut grads)?;
            self.recycle(s);
        }
        for v in [dx, x, hf, inv_f, dhf] {
            self.give(v);
        }
        if let (Ok(mut pools), Ok(mut pool)) = (self.w.pools.lock(), self.pool.lock()) {
            pools.push(std::mem::take(&mut *pool));
        }
        Ok((loss, grads))
    }

    /// `dst (m x n) = [dst +] beta * lhs (m x k) @ rhs (k x n)`, all row-major with the given
    /// row and column strides.
    #[allow(clippy::too_many_arguments)]
    fn mm(
        &self,
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
    ) {
        let par = if m * n * k >= 1 << 18 {
            self.par()
        } else {
            gemm::Parallelism::None
        };
        matmul(
            m, n, k, lhs, lhs_rs, lhs_cs, rhs, rhs_rs, rhs_cs, dst, dst_rs, accumulate, beta, par,
        );
    }

    /// `y[:, ..out] += s (X A^T) B^T`; returns `Z = X A^T`.
    #[allow(clippy::too_many_arguments)]
    fn lora_forward(
        &self,
        ad: &Adapter,
        x: &[f32],
        x_rs: usize,
        in_dim: usize,
        y: &mut [f32],
        y_rs: usize,
        out_dim: usize,
    ) -> Vec<f32> {
        let (n, r) = (self.dims.n, ad.rank);
        let mut z = self.buf(n * r);
        self.mm(
            n, r, in_dim, x, x_rs, 1, &ad.a, 1, in_dim, &mut z, r, false, 1.0,
        );
        self.mm(
            n, out_dim, r, &z, r, 1, &ad.b, 1, r, y, y_rs, true, ad.scaling,
        );
        z
    }

    /// Gradients of A and B from `dy`, and `dx += s dY B A` when `dx` is given.
    #[allow(clippy::too_many_arguments)]
    fn lora_backward(
        &self,
        ad: &Adapter,
        x: &[f32],
        x_rs: usize,
        in_dim: usize,
        z: &[f32],
        dy: &[f32],
        dy_rs: usize,
        out_dim: usize,
        dx: Option<(&mut [f32], usize)>,
        grads: &mut LoraGrads,
    ) -> candle_core::Result<()> {
        let (n, r) = (self.dims.n, ad.rank);
        let mut dz = self.buf(n * r);
        self.mm(
            n, r, out_dim, dy, dy_rs, 1, &ad.b, r, 1, &mut dz, r, false, ad.scaling,
        );
        let mut db = vec![0f32; out_dim * r];
        self.mm(
            out_dim, r, n, dy, 1, dy_rs, z, r, 1, &mut db, r, false, ad.scaling,
        );
        let mut da = vec![0f32; r * in_dim];
        self.mm(
            r, in_dim, n, &dz, 1, r, x, x_rs, 1, &mut da, in_dim, false, 1.0,
        );
        if let Some((dx, dx_rs)) = dx {
            self.mm(
                n, in_dim, r, &dz, r, 1, &ad.a, in_dim, 1, dx, dx_rs, true, 1.0,
            );
        }
        let dev = candle_core::Device::Cpu;
        grads
            .grads
            .push((ad.a_id, Tensor::from_vec(da, ad.dims.0.clone(), &dev)?));
        grads
            .grads
            .push((ad.b_id, Tensor::from_vec(db, ad.dims.1.clone(), &dev)?));
        Ok(())
    }

    fn layer_forward(
        &self,
        x_in: Vec<f32>,
        lw: &LayerWeights,
        ad: &LayerAdapters,
    ) -> (Vec<f32>, Saved) {
        let dm = self.dims;
        let (n, h, f) = (dm.n, dm.h, dm.f);
        let qkv_w = dm.qkv();
        let mut inv1 = self.buf(n);
        let mut h1 = self.buf(n * h);
        rms_forward(&x_in, &lw.norm1, self.eps, &mut h1, &mut inv1);
        let mut qkv = self.buf(n * qkv_w);
        self.mm(
            n, qkv_w, h, &h1, h, 1, &lw.qkv.wt, qkv_w, 1, &mut qkv, qkv_w, false, 1.0,
        );
        let mut z: [Vec<f32>; 7] = Default::default();
        let offs = [0, dm.q, dm.q + dm.kv];
        let outs = [dm.q, dm.kv, dm.kv];
        for j in 0..3 {
            if let Some(a) = &ad[j] {
                z[j] = self.lora_forward(a, &h1, h, h, &mut qkv[offs[j]..], qkv_w, outs[j]);
            }
        }
        self.geo.rope(&mut qkv, false);
        let mut probs = self.buf(dm.b * dm.heads * dm.t * dm.t);
        let mut attn = self.buf(n * dm.q);
        self.geo.attention_forward(&qkv, &mut probs, &mut attn);
        let mut x_mid = self.copy(&x_in);
        self.mm(
            n, h, dm.q, &attn, dm.q, 1, &lw.o.wt, h, 1, &mut x_mid, h, true, 1.0,
        );
        if let Some(a) = &ad[3] {
            z[3] = self.lora_forward(a, &attn, dm.q, dm.q, &mut x_mid, h, h);
        }
        let mut inv2 = self.buf(n);
        let mut h2 = self.buf(n * h);
        rms_forward(&x_mid, &lw.norm2, self.eps, &mut h2, &mut inv2);
        let mut gate_up = self.buf(n * 2 * f);
        self.mm(
            n,
            2 * f,
            h,
            &h2,
            h,
            1,
            &lw.gate_up.wt,
            2 * f,
            1,
            &mut gate_up,
            2 * f,
            false,
            1.0,
        );
        for j in 0..2 {
            if let Some(a) = &ad[4 + j] {
                z[4 + j] = self.lora_forward(a, &h2, h, h, &mut gate_up[j * f..], 2 * f, f);
            }
        }
        let mut act = self.buf(n * f);
        let gated = self.act;
        act.par_chunks_mut(f * 16)
            .zip(gate_up.par_chunks(2 * f * 16))
            .for_each(|(out, gu)| {
                for (o, row) in out.chunks_mut(f).zip(gu.chunks(2 * f)) {
                    let (g, u) = row.split_at(f);
                    // SAFETY: f32 and MaybeUninit<f32> share a layout; the kernel writes all.
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(
                            o.as_mut_ptr() as *mut std::mem::MaybeUninit<f32>,
                            o.len(),
                        )
                    };
                    match gated {
                        Activation::GeluTanh => fastmath::gelu_tanh_mul(g, u, o),
                        _ => fastmath::silu_mul(g, u, o),
                    }
                }
            });
        let mut out = self.copy(&x_mid);
        self.mm(
            n,
            h,
            f,
            &act,
            f,
            1,
            &lw.down.wt,
            h,
            1,
            &mut out,
            h,
            true,
            1.0,
        );
        if let Some(a) = &ad[6] {
            z[6] = self.lora_forward(a, &act, f, f, &mut out, h, h);
        }
        (
            out,
            Saved {
                x_in,
                inv1,
                h1,
                qkv,
                probs,
                attn,
                x_mid,
                inv2,
                h2,
                gate_up,
                act,
                z,
            },
        )
    }

    /// Takes the gradient of the layer's output; returns the gradient of its input (left at
    /// zero when `need_dx` is false: nothing below learns).
    fn layer_backward(
        &self,
        dout: Vec<f32>,
        lw: &LayerWeights,
        ad: &LayerAdapters,
        s: &Saved,
        need_dx: bool,
        grads: &mut LoraGrads,
    ) -> candle_core::Result<Vec<f32>> {
        let dm = self.dims;
        let (n, h, f) = (dm.n, dm.h, dm.f);
        let qkv_w = dm.qkv();
        // MLP.
        let mut dact = self.buf(n * f);
        self.mm(
            n, f, h, &dout, h, 1, &lw.down.w, f, 1, &mut dact, f, false, 1.0,
        );
        if let Some(a) = &ad[6] {
            self.lora_backward(
                a,
                &s.act,
                f,
                f,
                &s.z[6],
                &dout,
                h,
                h,
                Some((&mut dact, f)),
                grads,
            )?;
        }
        let mut dgu = self.buf(n * 2 * f);
        let gated = self.act;
        dgu.par_chunks_mut(2 * f * 16)
            .zip(s.gate_up.par_chunks(2 * f * 16))
            .zip(dact.par_chunks(f * 16))
            .for_each(|((dgu, gu), da)| {
                for ((drow, row), d) in dgu
                    .chunks_mut(2 * f)
                    .zip(gu.chunks(2 * f))
                    .zip(da.chunks(f))
                {
                    let (g, u) = row.split_at(f);
                    let (dg, du) = drow.split_at_mut(f);
                    match gated {
                        Activation::GeluTanh => fastmath::gelu_tanh_mul_bwd(g, u, d, dg, du),
                        _ => fastmath::silu_mul_bwd(g, u, d, dg, du),
                    }
                }
            });
        self.give(dact);
        let mut dh2 = self.buf(n * h);
        self.mm(
            n,
            h,
            2 * f,
            &dgu,
            2 * f,
            1,
            &lw.gate_up.w,
            h,
            1,
            &mut dh2,
            h,
            false,
            1.0,
        );
        for j in 0..2 {
            if let Some(a) = &ad[4 + j] {
                self.lora_backward(
                    a,
                    &s.h2,
                    h,
                    h,
                    &s.z[4 + j],
                    &dgu[j * f..],
                    2 * f,
                    f,
                    Some((&mut dh2, h)),
                    grads,
                )?;
            }
        }
        self.give(dgu);
        let mut dmid = dout;
        rms_backward(&s.x_mid, &s.inv2, &lw.norm2, &dh2, &mut dmid);
        self.give(dh2);
        // Attention.
        let mut dattn = self.buf(n * dm.q);
        self.mm(
            n, dm.q, h, &dmid, h, 1, &lw.o.w, dm.q, 1, &mut dattn, dm.q, false, 1.0,
        );
        if let Some(a) = &ad[3] {
            self.lora_backward(
                a,
                &s.attn,
                dm.q,
                dm.q,
                &s.z[3],
                &dmid,
                h,
                h,
                Some((&mut dattn, dm.q)),
                grads,
            )?;
        }
        let mut dqkv = self.zeroed(n * qkv_w);
        self.geo
            .attention_backward(&s.qkv, &s.probs, &dattn, &mut dqkv);
        self.give(dattn);
        self.geo.rope(&mut dqkv, true);
        let mut dh1 = if need_dx {
            let mut dh1 = self.buf(n * h);
            self.mm(
                n, h, qkv_w, &dqkv, qkv_w, 1, &lw.qkv.w, h, 1, &mut dh1, h, false, 1.0,
            );
            dh1
        } else {
            Vec::new()
        };
        let offs = [0, dm.q, dm.q + dm.kv];
        let outs = [dm.q, dm.kv, dm.kv];
        for j in 0..3 {
            if let Some(a) = &ad[j] {
                let dx = need_dx.then_some((&mut dh1[..], h));
                self.lora_backward(
                    a,
                    &s.h1,
                    h,
                    h,
                    &s.z[j],
                    &dqkv[offs[j]..],
                    qkv_w,
                    outs[j],
                    dx,
                    grads,
                )?;
            }
        }
        if need_dx {
            rms_backward(&s.x_in, &s.inv1, &lw.norm1, &dh1, &mut dmid);
        }
        self.give(dqkv);
        self.give(dh1);
        Ok(dmid)
    }
}

/// Sum over rows of `weight * (logsumexp - logit[target])`; leaves `weight * (softmax -
/// onehot)`, the loss's gradient, in `logits`.
fn cross_entropy_in_place(logits: &mut [f32], v: usize, targets: &[u32], weights: &[f32]) -> f64 {
    logits
        .par_chunks_mut(v)
        .zip(targets.par_iter())
        .zip(weights.par_iter())
        .map(|((row, &tg), &wt)| {
            if wt == 0.0 {
                row.fill(0.0);
                return 0.0;
            }
            let lse = fastmath::log_sum_exp(row);
            let loss = (lse - row[tg as usize]) as f64 * wt as f64;
            fastmath::softmax_row(row, None);
            for x in row.iter_mut() {
                *x *= wt;
            }
            row[tg as usize] -= wt;
            loss
        })
        .sum()
}
