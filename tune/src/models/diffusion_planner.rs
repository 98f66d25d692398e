//! A Diffusion-Planner-style denoiser for driving (REFERENCE §3a; issue 27, first version):
//! a scene encoder over the ego, neighbours with history, static objects, lanes and route lanes
//! (per-entity MLPs, then pre-norm transformer layers with padding masks), and a DiT decoder
//! that maps a noisy ego future to its clean estimate x0, conditioned by adaLN-zero on the
//! diffusion time and a route embedding and cross-attending to the scene.
//!
//! Departures from the paper's network, on purpose for a first version: each neighbour's
//! history and each lane's points are flattened into one MLP (the paper mixes them with an
//! MLP-Mixer), and only the ego's future is denoised (the paper adds ten neighbours jointly);
//! the ego future is split into tokens of `chunk` steps so the decoder's self-attention has a
//! sequence to work over. Variable names follow `vb.pp(...)` paths (`encoder.layers.0.attn.q`).

use crate::error::{Context, Result, TuneError};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Init, VarBuilder};

/// Sizes of the network and of the scene it reads.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    pub hidden: usize,
    pub heads: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    /// Future steps per decoder token.
    pub chunk: usize,
    pub future: usize,
    pub neighbours: usize,
    pub history: usize,
    pub static_objects: usize,
    pub lanes: usize,
    pub route_lanes: usize,
    pub lane_points: usize,
}

pub const EGO_FEATURES: usize = 6;
pub const NEIGHBOUR_FEATURES: usize = 11;
pub const STATIC_FEATURES: usize = 10;
pub const LANE_FEATURES: usize = 12;
pub const FUTURE_FEATURES: usize = 4;
const LN_EPS: f64 = 1e-6;

impl Default for Config {
    /// The paper's decoder (hidden 192, 6 heads, 3 blocks, encoder depth 3) on the scene sizes
    /// of `policy::driving::SceneConfig::default()`.
    fn default() -> Self {
        Config {
            hidden: 192,
            heads: 6,
            encoder_layers: 3,
            decoder_layers: 3,
            chunk: 10,
            future: 80,
            neighbours: 32,
            history: 21,
            static_objects: 5,
            lanes: 70,
            route_lanes: 25,
            lane_points: 20,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        let bad = |f: &str, p: String| Err(TuneError::input(f, p));
        if self.hidden == 0 || self.heads == 0 || !self.hidden.is_multiple_of(self.heads) {
            return bad(
                "hidden/heads",
                format!(
                    "{} / {}: hidden must be a positive multiple of heads",
                    self.hidden, self.heads
                ),
            );
        }
        if self.chunk == 0 || self.future == 0 || !self.future.is_multiple_of(self.chunk) {
            return bad(
                "future/chunk",
                format!(
                    "{} / {}: future must be a positive multiple of chunk",
                    self.future, self.chunk
                ),
            );
        }
        if self.lane_points == 0 || self.history == 0 {
            return bad("lane_points/history", "must be > 0".into());
        }
        Ok(())
    }
}

/// One batch of scenes, shapes as in the driving data set (B first).
#[derive(Debug, Clone)]
pub struct SceneBatch {
    pub ego: Tensor,
    pub neighbours: Tensor,
    pub static_objects: Tensor,
    pub lanes: Tensor,
    pub lane_limits: Tensor,
    pub route_lanes: Tensor,
}

fn lin(i: usize, o: usize, vb: VarBuilder) -> candle_core::Result<candle_nn::Linear> {
    candle_nn::linear(i, o, vb)
}

/// A linear layer initialised to zero (adaLN-zero: every block starts as the identity).
fn lin_zero(i: usize, o: usize, vb: VarBuilder) -> candle_core::Result<candle_nn::Linear> {
    let w = vb.get_with_hints((o, i), "weight", Init::Const(0.0))?;
    let b = vb.get_with_hints(o, "bias", Init::Const(0.0))?;
    Ok(candle_nn::Linear::new(w, Some(b)))
}

/// LayerNorm without affine parameters (DiT's), over the last dimension.
fn norm(x: &Tensor) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let c = x.broadcast_sub(&mean)?;
    let var = c.sqr()?.mean_keepdim(D::Minus1)?;
    c.broadcast_div(&(var + LN_EPS)?.sqrt()?)
}

/// x (1 + scale) + shift, with per-sample [B, D] shift and scale over [B, T, D].
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_mul(&(scale.unsqueeze(1)? + 1.0)?)?
        .broadcast_add(&shift.unsqueeze(1)?)
}

struct Mlp2 {
    fc1: candle_nn::Linear,
    fc2: candle_nn::Linear,
}

impl Mlp2 {
    fn new(i: usize, h: usize, o: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Mlp2 {
            fc1: lin(i, h, vb.pp("fc1"))?,
            fc2: lin(h, o, vb.pp("fc2"))?,
        })
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.gelu()?)
    }
}

struct MultiHeadAttention {
    q: candle_nn::Linear,
    k: candle_nn::Linear,
    v: candle_nn::Linear,
    o: candle_nn::Linear,
    heads: usize,
}

impl MultiHeadAttention {
    fn new(d: usize, heads: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(MultiHeadAttention {
            q: lin(d, d, vb.pp("q"))?,
            k: lin(d, d, vb.pp("k"))?,
            v: lin(d, d, vb.pp("v"))?,
            o: lin(d, d, vb.pp("o"))?,
            heads,
        })
    }

    /// `x` [B, Tq, D] attends to `ctx` [B, Tk, D]; `bias` [B, 1, 1, Tk] is 0 for keys to use
    /// and a large negative number for padding.
    fn forward(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, tq, d) = x.dims3()?;
        let tk = ctx.dim(1)?;
        let hd = d / self.heads;
        let split = |t: Tensor, n: usize| -> candle_core::Result<Tensor> {
            t.reshape((b, n, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q.forward(x)?, tq)?;
        let k = split(self.k.forward(ctx)?, tk)?;
        let v = split(self.v.forward(ctx)?, tk)?;
        let mut scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
        if let Some(bias) = bias {
            scores = scores.broadcast_add(bias)?;
        }
        let p = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = p.matmul(&v)?.transpose(1, 2)?.reshape((b, tq, d))?;
        self.o.forward(&out)
    }
}

struct EncoderLayer {
    attn: MultiHeadAttention,
    mlp: Mlp2,
}

impl EncoderLayer {
    fn forward(&self, x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
        let h = norm(x)?;
        let x = (x + self.attn.forward(&h, &h, Some(bias))?)?;
        &x + self.mlp.forward(&norm(&x)?)?
    }
}

struct DitBlock {
    ada: candle_nn::Linear,
    self_attn: MultiHeadAttention,
    cross_attn: MultiHeadAttention,
    mlp: Mlp2,
}

impl DitBlock {
    fn forward(
        &self,
        x: &Tensor,
        c: &Tensor,
        scene: &Tensor,
        bias: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let m = self.ada.forward(&c.silu()?)?.chunk(9, 1)?;
        let h = modulate(&norm(x)?, &m[0], &m[1])?;
        let x = (x + self
            .self_attn
            .forward(&h, &h, None)?
            .broadcast_mul(&m[2].unsqueeze(1)?)?)?;
        let h = modulate(&norm(&x)?, &m[3], &m[4])?;
        let x = (&x
            + self
                .cross_attn
                .forward(&h, scene, Some(bias))?
                .broadcast_mul(&m[5].unsqueeze(1)?)?)?;
        let h = modulate(&norm(&x)?, &m[6], &m[7])?;
        &x + self.mlp.forward(&h)?.broadcast_mul(&m[8].unsqueeze(1)?)?
    }
}

pub struct Model {
    cfg: Config,
    ego_encoder: Mlp2,
    neighbour_encoder: Mlp2,
    static_encoder: Mlp2,
    lane_encoder: Mlp2,
    route_encoder: Mlp2,
    /// One learned vector per entity type (ego, neighbour, static, lane), added to its tokens.
    type_embedding: Tensor,
    encoder: Vec<EncoderLayer>,
    time_mlp: Mlp2,
    future_in: candle_nn::Linear,
    future_position: Tensor,
    blocks: Vec<DitBlock>,
    final_ada: candle_nn::Linear,
    future_out: candle_nn::Linear,
}

impl Model {
    pub fn new(cfg: Config, vb: VarBuilder) -> Result<Model> {
        cfg.validate()?;
        let d = cfg.hidden;
        let lane_in = cfg.lane_points * LANE_FEATURES;
        let tokens = cfg.future / cfg.chunk;
        let build = || -> candle_core::Result<Model> {
            let attn = |vb: VarBuilder| MultiHeadAttention::new(d, cfg.heads, vb);
            Ok(Model {
                cfg,
                ego_encoder: Mlp2::new(EGO_FEATURES, d, d, vb.pp("ego_encoder"))?,
                neighbour_encoder: Mlp2::new(
                    cfg.history * NEIGHBOUR_FEATURES,
                    d,
                    d,
                    vb.pp("neighbour_encoder"),
                )?,
                static_encoder: Mlp2::new(STATIC_FEATURES, d, d, vb.pp("static_encoder"))?,
                lane_encoder: Mlp2::new(lane_in + 2, d, d, vb.pp("lane_encoder"))?,
                route_encoder: Mlp2::new(lane_in, d, d, vb.pp("route_encoder"))?,
                type_embedding: vb.get_with_hints(
                    (4, d),
                    "type_embedding",
                    Init::Randn {
                        mean: 0.0,
                        stdev: 0.02,
                    },
                )?,
                encoder: (0..cfg.encoder_layers)
                    .map(|i| {
                        let vb = vb.pp(format!("encoder.layers.{i}"));
                        Ok(EncoderLayer {
                            attn: attn(vb.pp("attn"))?,
                            mlp: Mlp2::new(d, 4 * d, d, vb.pp("mlp"))?,
                        })
                    })
                    .collect::<candle_core::Result<_>>()?,
                time_mlp: Mlp2::new(d, d, d, vb.pp("time_mlp"))?,
                future_in: lin(cfg.chunk * FUTURE_FEATURES, d, vb.pp("future_in"))?,
                future_position: vb.get_with_hints(
                    (tokens, d),
                    "future_position",
                    Init::Randn {
                        mean: 0.0,
                        stdev: 0.02,
                    },
                )?,
                blocks: (0..cfg.decoder_layers)
                    .map(|i| {
                        let vb = vb.pp(format!("decoder.blocks.{i}"));
                        Ok(DitBlock {
                            ada: lin_zero(d, 9 * d, vb.pp("ada"))?,
                            self_attn: attn(vb.pp("self_attn"))?,
                            cross_attn: attn(vb.pp("cross_attn"))?,
                            mlp: Mlp2::new(d, 4 * d, d, vb.pp("mlp"))?,
                        })
                    })
                    .collect::<candle_core::Result<_>>()?,
                final_ada: lin_zero(d, 2 * d, vb.pp("decoder.final_ada"))?,
                future_out: lin_zero(d, cfg.chunk * FUTURE_FEATURES, vb.pp("future_out"))?,
            })
        };
        build().context("building the diffusion planner")
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Checks a batch's shapes against the configuration, naming the tensor that differs. The
    /// entity counts may be smaller than the configured ones (a batch cut to the entities
    /// present: the scene builder puts them first), never larger.
    pub fn check_batch(&self, s: &SceneBatch) -> Result<()> {
        let c = &self.cfg;
        let b = s.ego.dim(0).unwrap_or(0);
        let n = s.neighbours.dim(1).unwrap_or(0);
        let st = s.static_objects.dim(1).unwrap_or(0);
        let l = s.lanes.dim(1).unwrap_or(0);
        let r = s.route_lanes.dim(1).unwrap_or(0);
        let want: [(&str, &Tensor, Vec<usize>, usize); 6] = [
            ("ego", &s.ego, vec![b, EGO_FEATURES], 0),
            (
                "neighbours",
                &s.neighbours,
                vec![b, n, c.history, NEIGHBOUR_FEATURES],
                c.neighbours,
            ),
            (
                "static_objects",
                &s.static_objects,
                vec![b, st, STATIC_FEATURES],
                c.static_objects,
            ),
            (
                "lanes",
                &s.lanes,
                vec![b, l, c.lane_points, LANE_FEATURES],
                c.lanes,
            ),
            ("lane_limits", &s.lane_limits, vec![b, l, 2], c.lanes),
            (
                "route_lanes",
                &s.route_lanes,
                vec![b, r, c.lane_points, LANE_FEATURES],
                c.route_lanes,
            ),
        ];
        for (name, t, shape, most) in want {
            let too_many = shape.len() > 2 && most > 0 && shape[1] > most;
            if t.dims() != shape.as_slice() || too_many {
                return Err(TuneError::input(
                    name,
                    format!(
                        "shape {:?}; the planner reads [B, <= {}, ...] as {:?} (the checkpoint's \
                         scene sizes differ from the data's?)",
                        t.dims(),
                        most,
                        shape
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Encodes the scene: tokens [B, 1 + N + S + L, D], their attention bias [B, 1, 1, T]
    /// (padding masked), and the route embedding [B, D] (the mean of the route lanes present).
    pub fn encode(&self, s: &SceneBatch) -> Result<(Tensor, Tensor, Tensor)> {
        self.check_batch(s)?;
        let f = || -> candle_core::Result<(Tensor, Tensor, Tensor)> {
            let b = s.ego.dim(0)?;
            let flat = |t: &Tensor| t.reshape((b, t.dim(1)?, ()));
            let nb = flat(&s.neighbours)?;
            let st = s.static_objects.clone();
            let ln = Tensor::cat(&[flat(&s.lanes)?, s.lane_limits.clone()], 2)?;
            let rt = flat(&s.route_lanes)?;
            // An entity is present when any of its features is non-zero.
            let present = |t: &Tensor| -> candle_core::Result<Tensor> {
                t.abs()?.sum(D::Minus1)?.gt(0.0)?.to_dtype(DType::F32)
            };
            let typed = |x: Tensor, k: usize| x.broadcast_add(&self.type_embedding.get(k)?);
            let ego = typed(self.ego_encoder.forward(&s.ego.unsqueeze(1)?)?, 0)?;
            let nbt = typed(self.neighbour_encoder.forward(&nb)?, 1)?;
            let stt = typed(self.static_encoder.forward(&st)?, 2)?;
            let lnt = typed(self.lane_encoder.forward(&ln)?, 3)?;
            let mut x = Tensor::cat(&[ego, nbt, stt, lnt], 1)?;
            let mask = Tensor::cat(
                &[
                    Tensor::ones((b, 1), DType::F32, s.ego.device())?,
                    present(&nb)?,
                    present(&st)?,
                    present(&flat(&s.lanes)?)?,
                ],
                1,
            )?;
            let bias = ((mask.clone() - 1.0)? * 1e9)?.unsqueeze(1)?.unsqueeze(1)?;
            for l in &self.encoder {
                x = l.forward(&x, &bias)?;
            }
            let rmask = present(&rt)?;
            let re = self
                .route_encoder
                .forward(&rt)?
                .broadcast_mul(&rmask.unsqueeze(2)?)?;
            let count = rmask.sum_keepdim(1)?.clamp(1.0, f64::MAX)?;
            let route = re.sum(1)?.broadcast_div(&count)?;
            Ok((x, bias, route))
        };
        f().context("encoding the scene")
    }

    /// The clean-future estimate x0 [B, future, 4] from the noisy future `x_t` [B, future, 4]
    /// at diffusion time `t` [B] in (0, 1], given an encoded scene.
    pub fn denoise(
        &self,
        scene: &(Tensor, Tensor, Tensor),
        x_t: &Tensor,
        t: &Tensor,
    ) -> Result<Tensor> {
        let f = || -> candle_core::Result<Tensor> {
            let c = &self.cfg;
            let (tokens_in, bias, route) = scene;
            let b = x_t.dim(0)?;
            let tokens = c.future / c.chunk;
            let cond = (self.time_mlp.forward(&timestep_embedding(t, c.hidden)?)? + route)?;
            let mut x = self
                .future_in
                .forward(&x_t.reshape((b, tokens, c.chunk * FUTURE_FEATURES))?)?
                .broadcast_add(&self.future_position)?;
            for blk in &self.blocks {
                x = blk.forward(&x, &cond, tokens_in, bias)?;
            }
            let m = self.final_ada.forward(&cond.silu()?)?.chunk(2, 1)?;
            let x = modulate(&norm(&x)?, &m[0], &m[1])?;
            self.future_out
                .forward(&x)?
                .reshape((b, c.future, FUTURE_FEATURES))
        };
        f().context("denoising the future")
    }
}

/// Sinusoidal embedding of t in (0, 1] (scaled to 0..1000 as a DDPM timestep), [B, dim].
pub fn timestep_embedding(t: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f32).ln() * i as f32 / half as f32).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = (t.unsqueeze(1)? * 1000.0)?.broadcast_mul(&freqs)?;
    let emb = Tensor::cat(&[args.cos()?, args.sin()?], 1)?;
    if !dim.is_multiple_of(2) {
        Tensor::cat(
            &[emb, Tensor::zeros((t.dim(0)?, 1), DType::F32, t.device())?],
            1,
        )
    } else {
        Ok(emb)
    }
}

/// Zeros of a scene batch's shapes, for tests and warm-up.
pub fn empty_scene(cfg: &Config, batch: usize, device: &Device) -> candle_core::Result<SceneBatch> {
    let z = |s: &[usize]| Tensor::zeros(s, DType::F32, device);
    Ok(SceneBatch {
        ego: z(&[batch, EGO_FEATURES])?,
        neighbours: z(&[batch, cfg.neighbours, cfg.history, NEIGHBOUR_FEATURES])?,
        static_objects: z(&[batch, cfg.static_objects, STATIC_FEATURES])?,
        lanes: z(&[batch, cfg.lanes, cfg.lane_points, LANE_FEATURES])?,
        lane_limits: z(&[batch, cfg.lanes, 2])?,
        route_lanes: z(&[batch, cfg.route_lanes, cfg.lane_points, LANE_FEATURES])?,
    })
}
