//! The intervention (REFERENCE §1, the paper's Eq. 2): the FFN activation `act(gate) * up` (the
//! input of `W_down`, hook point `blocks.{l}.mlp.act`) is *set* to a constant `alpha` for the
//! chosen neurons at every token position: `f~_i = alpha if i in S else f_i(x)`.
//!
//! A [`SteeringHandle`] holds any number of clusters, each with its own alpha (or off). It is
//! cheap to clone and `Send + Sync`: a UI or launch-file thread calls [`SteeringHandle::set`]
//! while the inference thread owns a [`Steerer`], whose [`Steerer::hooks`] it calls before each
//! forward pass. The steerer rebuilds its [`Hooks`] only when the handle's generation changed
//! (alphas are atomics; no lock on the inference path), and returns `None` when nothing is
//! active so that an unsteered pass takes the model's hook-free path and is bit-identical.
//!
//! When a neuron is in two active clusters, the cluster listed later wins. For a VLM
//! (PaliGemma, pi0) the clusters address the language model's blocks ([`Tower::Main`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use rudder_tune::hooks::{HookAction, HookPoint, Hooks, Site, Tower};
use rudder_tune::models::decoder::Decoder;

use crate::dict::Dictionary;
use crate::error::{Result, SteerError};

/// Which model a steering set addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub num_layers: usize,
    pub d_ff: usize,
    pub tower: Tower,
}

impl Geometry {
    pub fn of(dec: &Decoder) -> Self {
        Self {
            num_layers: dec.layers.len(),
            d_ff: dec.d_ff(),
            tower: dec.tower,
        }
    }
}

#[derive(Debug)]
struct Plan {
    name: String,
    flat: Vec<usize>,
    /// (layer, neuron indices within the layer), layers ascending.
    by_layer: Vec<(usize, Vec<usize>)>,
}

/// f32 bits meaning "off" (a NaN alpha is refused, so it cannot collide).
const OFF: u32 = 0x7FC0_0001;

#[derive(Debug)]
struct Shared {
    geometry: Geometry,
    clusters: Vec<Plan>,
    alphas: Vec<AtomicU32>,
    generation: AtomicU64,
}

/// Clusters with live alphas, shared between threads.
#[derive(Debug, Clone)]
pub struct SteeringHandle {
    shared: Arc<Shared>,
}

impl SteeringHandle {
    /// Clusters of flat ids (`layer * d_ff + neuron`), all off.
    pub fn new(geometry: Geometry, clusters: Vec<(String, Vec<usize>)>) -> Result<Self> {
        let total = geometry.num_layers * geometry.d_ff;
        let mut plans = Vec::with_capacity(clusters.len());
        for (name, flat) in clusters {
            if plans.iter().any(|p: &Plan| p.name == name) {
                return Err(SteerError::Invalid(format!(
                    "cluster `{name}` is listed twice"
                )));
            }
            let mut by: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for &f in &flat {
                if f >= total {
                    return Err(SteerError::Invalid(format!(
                        "cluster `{name}`: neuron {f} (layer {}) is beyond the model's {} layers x {} neurons",
                        f / geometry.d_ff.max(1),
                        geometry.num_layers,
                        geometry.d_ff
                    )));
                }
                by.entry(f / geometry.d_ff)
                    .or_default()
                    .push(f % geometry.d_ff);
            }
            let by_layer = by
                .into_iter()
                .map(|(l, mut v)| {
                    v.sort_unstable();
                    v.dedup();
                    (l, v)
                })
                .collect();
            plans.push(Plan {
                name,
                flat,
                by_layer,
            });
        }
        let alphas = plans.iter().map(|_| AtomicU32::new(OFF)).collect();
        Ok(Self {
            shared: Arc::new(Shared {
                geometry,
                clusters: plans,
                alphas,
                generation: AtomicU64::new(0),
            }),
        })
    }

    /// The named clusters (or controls) of a dictionary, every one when `names` is None.
    pub fn from_dictionary(
        dict: &Dictionary,
        names: Option<&[String]>,
        geometry: Geometry,
    ) -> Result<Self> {
        let picked: Vec<(String, Vec<usize>)> = match names {
            None => dict.all().map(|(n, v)| (n.clone(), v.clone())).collect(),
            Some(ns) => ns
                .iter()
                .map(|n| {
                    dict.get(n).map(|v| (n.clone(), v.clone())).ok_or_else(|| {
                        SteerError::Invalid(format!(
                            "no cluster `{n}` in the dictionary (it has: {})",
                            dict.all()
                                .map(|(k, _)| k.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })
                })
                .collect::<Result<_>>()?,
        };
        Self::new(geometry, picked)
    }

    pub fn geometry(&self) -> Geometry {
        self.shared.geometry
    }

    pub fn names(&self) -> Vec<String> {
        self.shared
            .clusters
            .iter()
            .map(|p| p.name.clone())
            .collect()
    }

    /// The flat ids of a cluster.
    pub fn neurons(&self, name: &str) -> Option<&[usize]> {
        self.shared
            .clusters
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.flat.as_slice())
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.shared
            .clusters
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| {
                SteerError::Invalid(format!(
                    "no steering cluster `{name}` (known: {})",
                    self.names().join(", ")
                ))
            })
    }

    /// Sets a cluster's alpha (`None`: off). Takes effect at the next [`Steerer::hooks`].
    pub fn set(&self, name: &str, alpha: Option<f32>) -> Result<()> {
        let i = self.index(name)?;
        let bits = match alpha {
            None => OFF,
            Some(a) if a.is_finite() => a.to_bits(),
            Some(a) => {
                return Err(SteerError::Invalid(format!(
                    "cluster `{name}`: alpha must be a finite number, got {a}"
                )))
            }
        };
        self.shared.alphas[i].store(bits, Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Turns every cluster off.
    pub fn clear(&self) {
        for a in &self.shared.alphas {
            a.store(OFF, Ordering::Release);
        }
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn alpha(&self, name: &str) -> Result<Option<f32>> {
        let i = self.index(name)?;
        Ok(decode(self.shared.alphas[i].load(Ordering::Acquire)))
    }

    /// `(name, alpha)` for every cluster.
    pub fn snapshot(&self) -> Vec<(String, Option<f32>)> {
        self.shared
            .clusters
            .iter()
            .zip(&self.shared.alphas)
            .map(|(p, a)| (p.name.clone(), decode(a.load(Ordering::Acquire))))
            .collect()
    }

    /// Bumped by every change.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// The hook actions the current alphas call for, one `SetNeurons` per (layer, alpha).
    pub fn actions(&self) -> Vec<(HookPoint, Vec<HookAction>)> {
        let g = self.shared.geometry;
        let mut per_layer: BTreeMap<usize, BTreeMap<usize, u32>> = BTreeMap::new();
        for (p, a) in self.shared.clusters.iter().zip(&self.shared.alphas) {
            let bits = a.load(Ordering::Acquire);
            if bits == OFF {
                continue;
            }
            for (l, idx) in &p.by_layer {
                let m = per_layer.entry(*l).or_default();
                for &i in idx {
                    m.insert(i, bits);
                }
            }
        }
        per_layer
            .into_iter()
            .map(|(layer, m)| {
                let mut by_alpha: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
                for (i, bits) in m {
                    by_alpha.entry(bits).or_default().push(i);
                }
                let point = HookPoint {
                    tower: g.tower,
                    layer,
                    site: Site::MlpAct,
                };
                let actions = by_alpha
                    .into_iter()
                    .map(|(bits, indices)| HookAction::SetNeurons {
                        indices,
                        value: f32::from_bits(bits),
                    })
                    .collect();
                (point, actions)
            })
            .collect()
    }

    /// A fresh `Hooks` with the current steering (add captures after it to see its effect).
    pub fn to_hooks(&self) -> Hooks {
        let mut h = Hooks::new();
        for (p, acts) in self.actions() {
            h.set(p, acts);
        }
        h
    }

    /// The per-inference-thread side.
    pub fn steerer(&self) -> Steerer {
        Steerer {
            handle: self.clone(),
            seen: None,
            hooks: Hooks::new(),
            extra: HashMap::new(),
            points: Vec::new(),
            active: false,
        }
    }
}

fn decode(bits: u32) -> Option<f32> {
    (bits != OFF).then(|| f32::from_bits(bits))
}

/// Owns the `Hooks` the model runs with and keeps them in step with a [`SteeringHandle`].
#[derive(Debug)]
pub struct Steerer {
    handle: SteeringHandle,
    seen: Option<u64>,
    hooks: Hooks,
    /// Other actions (captures...) kept after the steering ones at their point.
    extra: HashMap<HookPoint, Vec<HookAction>>,
    points: Vec<HookPoint>,
    active: bool,
}

impl Steerer {
    pub fn handle(&self) -> &SteeringHandle {
        &self.handle
    }

    /// Registers another action (e.g. `Capture`) that runs after the steering at `point`.
    pub fn add_hook(&mut self, point: HookPoint, action: HookAction) {
        self.extra.entry(point).or_default().push(action);
        self.seen = None;
    }

    /// Rebuilds the hooks if the handle changed since the last call; true when it did.
    pub fn refresh(&mut self) -> bool {
        let g = self.handle.generation();
        if self.seen == Some(g) {
            return false;
        }
        self.seen = Some(g);
        for p in self.points.drain(..) {
            self.hooks.set(p, vec![]);
        }
        let mut steer = self.handle.actions();
        self.active = !steer.is_empty();
        for (p, extra) in &self.extra {
            match steer.iter_mut().find(|(q, _)| q == p) {
                Some((_, acts)) => acts.extend(extra.iter().cloned()),
                None => steer.push((*p, extra.clone())),
            }
        }
        for (p, acts) in steer {
            self.points.push(p);
            self.hooks.set(p, acts);
        }
        true
    }

    /// Whether any cluster is on (after the last refresh).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The hooks to pass to the model's forward pass: refreshed, and `None` when no cluster is
    /// on and no other hook is registered (the unhooked path, bit-identical to no steering).
    pub fn hooks(&mut self) -> Option<&mut Hooks> {
        self.refresh();
        if self.points.is_empty() {
            None
        } else {
            Some(&mut self.hooks)
        }
    }

    /// The hooks as they are (to read captures).
    pub fn hooks_ref(&self) -> &Hooks {
        &self.hooks
    }
}

/// Parses `fast=4,slow=off` (also `name=none`): cluster names with alphas.
pub fn parse_alphas(spec: &str) -> Result<Vec<(String, Option<f32>)>> {
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let (n, a) = s.split_once('=').ok_or_else(|| {
                SteerError::Invalid(format!("`{s}`: expected NAME=ALPHA (e.g. fast=4, up=off)"))
            })?;
            let a = a.trim();
            let alpha =
                match a {
                    "off" | "none" => None,
                    _ => Some(a.parse::<f32>().ok().filter(|x| x.is_finite()).ok_or_else(
                        || {
                            SteerError::Invalid(format!(
                                "`{s}`: alpha `{a}` is not a finite number"
                            ))
                        },
                    )?),
                };
            Ok((n.trim().to_string(), alpha))
        })
        .collect()
}
