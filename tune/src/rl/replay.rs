//! A fixed-capacity ring buffer of transitions, sampled uniformly into candle batches, mixed
//! offline/online as Cal-QL samples its updates, and kept in safetensors files written
//! atomically.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::checkpoint::{save_safetensors_atomic, TensorStore};
use crate::error::{Context, Result, TuneError};
use crate::train::Rng;

/// The `format` metadata of a replay-buffer file.
pub const FORMAT: &str = "rudder-replay-v1";

/// One step of experience. `mc_return` is the discounted return-to-go from this step
/// ([`crate::rl::mc_returns`]); `done` marks a true terminal (a time-out is not one).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub obs: Vec<f32>,
    pub action: Vec<f32>,
    pub reward: f32,
    pub next_obs: Vec<f32>,
    pub done: bool,
    pub mc_return: f32,
}

/// A sampled batch on one device: `obs` / `next_obs` `[B, O]`, `action` `[B, A]`, `reward`,
/// `done` (1.0 for a terminal, else 0.0) and `mc_return` `[B]`, all f32.
#[derive(Debug, Clone)]
pub struct Batch {
    pub obs: Tensor,
    pub action: Tensor,
    pub reward: Tensor,
    pub next_obs: Tensor,
    pub done: Tensor,
    pub mc_return: Tensor,
}

impl Batch {
    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.reward.dims().first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rows being gathered into a [`Batch`].
#[derive(Default)]
struct Rows {
    obs: Vec<f32>,
    action: Vec<f32>,
    reward: Vec<f32>,
    next_obs: Vec<f32>,
    done: Vec<f32>,
    mc_return: Vec<f32>,
}

impl Rows {
    fn into_batch(self, obs_dim: usize, action_dim: usize, device: &Device) -> Result<Batch> {
        let b = self.reward.len();
        let what = "building a replay batch";
        Ok(Batch {
            obs: Tensor::from_vec(self.obs, (b, obs_dim), device).context(what)?,
            action: Tensor::from_vec(self.action, (b, action_dim), device).context(what)?,
            reward: Tensor::from_vec(self.reward, b, device).context(what)?,
            next_obs: Tensor::from_vec(self.next_obs, (b, obs_dim), device).context(what)?,
            done: Tensor::from_vec(self.done, b, device).context(what)?,
            mc_return: Tensor::from_vec(self.mc_return, b, device).context(what)?,
        })
    }
}

/// Transitions with `obs_dim`-long observations and `action_dim`-long actions. Once
/// `capacity` transitions are held, each push overwrites the oldest.
#[derive(Debug, Clone)]
pub struct ReplayBuffer {
    capacity: usize,
    obs_dim: usize,
    action_dim: usize,
    obs: Vec<f32>,
    action: Vec<f32>,
    reward: Vec<f32>,
    next_obs: Vec<f32>,
    done: Vec<bool>,
    mc_return: Vec<f32>,
    /// The slot the next push writes once the buffer is full (the oldest transition's slot).
    head: usize,
    /// Transitions ever pushed (kept across save and load).
    pushed: u64,
}

impl ReplayBuffer {
    pub fn new(capacity: usize, obs_dim: usize, action_dim: usize) -> Result<Self> {
        if capacity == 0 {
            return Err(TuneError::input("capacity", "must be > 0"));
        }
        if obs_dim == 0 || action_dim == 0 {
            return Err(TuneError::input(
                "obs_dim / action_dim",
                format!("must be > 0 (got {obs_dim} / {action_dim})"),
            ));
        }
        Ok(Self {
            capacity,
            obs_dim,
            action_dim,
            obs: Vec::new(),
            action: Vec::new(),
            reward: Vec::new(),
            next_obs: Vec::new(),
            done: Vec::new(),
            mc_return: Vec::new(),
            head: 0,
            pushed: 0,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn obs_dim(&self) -> usize {
        self.obs_dim
    }

    pub fn action_dim(&self) -> usize {
        self.action_dim
    }

    /// Transitions held (at most `capacity`).
    pub fn len(&self) -> usize {
        self.reward.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reward.is_empty()
    }

    /// Transitions ever pushed, overwritten ones included.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Adds `t`, overwriting the oldest transition when full. A vector of the wrong length or
    /// a non-finite number is an error naming the field, and leaves the buffer unchanged.
    pub fn push(&mut self, t: &Transition) -> Result<()> {
        let check = |name: &str, v: &[f32], dim: usize| -> Result<()> {
            if v.len() != dim {
                return Err(TuneError::input(
                    name,
                    format!("length {}, the buffer holds {dim}", v.len()),
                ));
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(TuneError::input(name, format!("element {i} is {}", v[i])));
            }
            Ok(())
        };
        check("obs", &t.obs, self.obs_dim)?;
        check("action", &t.action, self.action_dim)?;
        check("next_obs", &t.next_obs, self.obs_dim)?;
        check("reward", &[t.reward], 1)?;
        check("mc_return", &[t.mc_return], 1)?;
        if self.len() < self.capacity {
            self.obs.extend_from_slice(&t.obs);
            self.action.extend_from_slice(&t.action);
            self.next_obs.extend_from_slice(&t.next_obs);
            self.reward.push(t.reward);
            self.done.push(t.done);
            self.mc_return.push(t.mc_return);
        } else {
            let (i, o, a) = (self.head, self.obs_dim, self.action_dim);
            self.obs[i * o..(i + 1) * o].copy_from_slice(&t.obs);
            self.action[i * a..(i + 1) * a].copy_from_slice(&t.action);
            self.next_obs[i * o..(i + 1) * o].copy_from_slice(&t.next_obs);
            self.reward[i] = t.reward;
            self.done[i] = t.done;
            self.mc_return[i] = t.mc_return;
            self.head = (self.head + 1) % self.capacity;
        }
        self.pushed += 1;
        Ok(())
    }

    /// The storage slot of the `i`-th transition, oldest first.
    fn slot(&self, i: usize) -> usize {
        if self.len() < self.capacity {
            i
        } else {
            (self.head + i) % self.capacity
        }
    }

    /// The `i`-th transition held, oldest first.
    pub fn get(&self, i: usize) -> Option<Transition> {
        if i >= self.len() {
            return None;
        }
        let s = self.slot(i);
        let (o, a) = (self.obs_dim, self.action_dim);
        Some(Transition {
            obs: self.obs[s * o..(s + 1) * o].to_vec(),
            action: self.action[s * a..(s + 1) * a].to_vec(),
            reward: self.reward[s],
            next_obs: self.next_obs[s * o..(s + 1) * o].to_vec(),
            done: self.done[s],
            mc_return: self.mc_return[s],
        })
    }

    /// Appends `n` transitions drawn uniformly with replacement: `rng.below(len)` each, an
    /// index oldest first, so a buffer saved and loaded draws the same batches.
    fn gather(&self, rng: &mut Rng, n: usize, rows: &mut Rows) {
        let (o, a) = (self.obs_dim, self.action_dim);
        for _ in 0..n {
            let s = self.slot(rng.below(self.len()));
            rows.obs.extend_from_slice(&self.obs[s * o..(s + 1) * o]);
            rows.action
                .extend_from_slice(&self.action[s * a..(s + 1) * a]);
            rows.next_obs
                .extend_from_slice(&self.next_obs[s * o..(s + 1) * o]);
            rows.reward.push(self.reward[s]);
            rows.done.push(if self.done[s] { 1.0 } else { 0.0 });
            rows.mc_return.push(self.mc_return[s]);
        }
    }

    fn require(&self, name: &str, n: usize) -> Result<()> {
        if n > 0 && self.is_empty() {
            return Err(TuneError::input(
                name,
                format!("empty, cannot sample {n} transitions from it"),
            ));
        }
        Ok(())
    }

    /// `batch` transitions drawn uniformly with replacement.
    pub fn sample(&self, rng: &mut Rng, batch: usize, device: &Device) -> Result<Batch> {
        self.require("replay buffer", batch)?;
        let mut rows = Rows::default();
        self.gather(rng, batch, &mut rows);
        rows.into_batch(self.obs_dim, self.action_dim, device)
    }

    /// Cal-QL's mixed batch: `round(batch * ratio)` rows from `offline` (first), the rest from
    /// `online`, each drawn uniformly with replacement. `ratio` is the offline share in [0, 1]
    /// (0.5 in Cal-QL's fine-tuning runs). A buffer is only needed when rows are drawn from it;
    /// both must have the same dimensions.
    pub fn sample_mixed(
        offline: &ReplayBuffer,
        online: &ReplayBuffer,
        ratio: f64,
        rng: &mut Rng,
        batch: usize,
        device: &Device,
    ) -> Result<Batch> {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(TuneError::input(
                "ratio",
                format!("{ratio}, the offline share must be in [0, 1]"),
            ));
        }
        if (offline.obs_dim, offline.action_dim) != (online.obs_dim, online.action_dim) {
            return Err(TuneError::input(
                "online",
                format!(
                    "obs/action dims {}/{}, the offline buffer's are {}/{}",
                    online.obs_dim, online.action_dim, offline.obs_dim, offline.action_dim
                ),
            ));
        }
        let n_off = ((batch as f64 * ratio).round() as usize).min(batch);
        let n_on = batch - n_off;
        offline.require("offline", n_off)?;
        online.require("online", n_on)?;
        let mut rows = Rows::default();
        offline.gather(rng, n_off, &mut rows);
        online.gather(rng, n_on, &mut rows);
        rows.into_batch(offline.obs_dim, offline.action_dim, device)
    }

    /// Writes the transitions, oldest first, to a safetensors file atomically (temporary file,
    /// fsync, rename): `obs`, `next_obs` `[n, O]`, `action` `[n, A]`, `reward`, `mc_return`
    /// `[n]` f32 and `done` `[n]` u8, with `format`, `capacity`, `obs_dim`, `action_dim` and
    /// `pushed` as metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        let n = self.len();
        let (o, a) = (self.obs_dim, self.action_dim);
        let mut rows = Rows::default();
        let mut done = Vec::with_capacity(n);
        for i in 0..n {
            let s = self.slot(i);
            rows.obs.extend_from_slice(&self.obs[s * o..(s + 1) * o]);
            rows.action
                .extend_from_slice(&self.action[s * a..(s + 1) * a]);
            rows.next_obs
                .extend_from_slice(&self.next_obs[s * o..(s + 1) * o]);
            rows.reward.push(self.reward[s]);
            rows.mc_return.push(self.mc_return[s]);
            done.push(u8::from(self.done[s]));
        }
        let dev = Device::Cpu;
        let err = |tensor: &str| {
            let tensor = tensor.to_string();
            move |e: candle_core::Error| TuneError::Tensor {
                path: path.to_path_buf(),
                tensor,
                problem: e.to_string(),
            }
        };
        let mut tensors = HashMap::new();
        tensors.insert(
            "obs".to_string(),
            Tensor::from_vec(rows.obs, (n, o), &dev).map_err(err("obs"))?,
        );
        tensors.insert(
            "action".to_string(),
            Tensor::from_vec(rows.action, (n, a), &dev).map_err(err("action"))?,
        );
        tensors.insert(
            "next_obs".to_string(),
            Tensor::from_vec(rows.next_obs, (n, o), &dev).map_err(err("next_obs"))?,
        );
        tensors.insert(
            "reward".to_string(),
            Tensor::from_vec(rows.reward, n, &dev).map_err(err("reward"))?,
        );
        tensors.insert(
            "mc_return".to_string(),
            Tensor::from_vec(rows.mc_return, n, &dev).map_err(err("mc_return"))?,
        );
        tensors.insert(
            "done".to_string(),
            Tensor::from_vec(done, n, &dev).map_err(err("done"))?,
        );
        let meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("capacity".to_string(), self.capacity.to_string()),
            ("obs_dim".to_string(), o.to_string()),
            ("action_dim".to_string(), a.to_string()),
            ("pushed".to_string(), self.pushed.to_string()),
        ]);
        save_safetensors_atomic(&tensors, Some(meta), path)
    }

    /// Reads a file [`ReplayBuffer::save`] wrote. Every tensor's dtype and shape is checked
    /// against the metadata's dimensions; an error names the file and the tensor or field.
    pub fn load(path: &Path) -> Result<Self> {
        let store = TensorStore::load_file(path, &Device::Cpu)?;
        let meta = store.metadata();
        let field = |name: &str| -> Result<u64> {
            let file_err = |problem: String| TuneError::ConfigField {
                path: path.to_path_buf(),
                field: name.to_string(),
                problem,
            };
            let v = meta
                .get(name)
                .ok_or_else(|| file_err("missing from the metadata".into()))?;
            v.parse::<u64>()
                .map_err(|e| file_err(format!("`{v}` is not a count: {e}")))
        };
        match meta.get("format") {
            Some(f) if f == FORMAT => {}
            other => {
                return Err(TuneError::ConfigField {
                    path: path.to_path_buf(),
                    field: "format".into(),
                    problem: format!("{other:?}, expected `{FORMAT}` (not a replay-buffer file)"),
                })
            }
        }
        let capacity = field("capacity")? as usize;
        let obs_dim = field("obs_dim")? as usize;
        let action_dim = field("action_dim")? as usize;
        let pushed = field("pushed")?;
        let mut buf =
            Self::new(capacity, obs_dim, action_dim).map_err(|e| TuneError::ConfigField {
                path: path.to_path_buf(),
                field: "capacity / obs_dim / action_dim".into(),
                problem: e.to_string(),
            })?;
        let n = store.get("reward")?.dims().first().copied().unwrap_or(0);
        if n > capacity {
            return Err(store.tensor_error(
                "reward",
                format!("{n} transitions, more than the capacity {capacity}"),
            ));
        }
        let read =
            |name: &str, dtype: DType, dims: &[usize]| -> Result<Tensor> {
                let t = store.get(name)?;
                if t.dtype() != dtype {
                    return Err(store
                        .tensor_error(name, format!("dtype {:?}, expected {dtype:?}", t.dtype())));
                }
                if t.dims() != dims {
                    return Err(store
                        .tensor_error(name, format!("shape {:?}, expected {dims:?}", t.dims())));
                }
                Ok(t.clone())
            };
        let f32s = |name: &str, dims: &[usize]| -> Result<Vec<f32>> {
            let t = read(name, DType::F32, dims)?;
            let v = t
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| store.tensor_error(name, e.to_string()))?;
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(store.tensor_error(name, format!("element {i} is {}", v[i])));
            }
            Ok(v)
        };
        buf.obs = f32s("obs", &[n, obs_dim])?;
        buf.action = f32s("action", &[n, action_dim])?;
        buf.next_obs = f32s("next_obs", &[n, obs_dim])?;
        buf.reward = f32s("reward", &[n])?;
        buf.mc_return = f32s("mc_return", &[n])?;
        let done = read("done", DType::U8, &[n])?
            .to_vec1::<u8>()
            .map_err(|e| store.tensor_error("done", e.to_string()))?;
        if let Some(i) = done.iter().position(|&d| d > 1) {
            return Err(
                store.tensor_error("done", format!("element {i} is {}, not 0 or 1", done[i]))
            );
        }
        buf.done = done.into_iter().map(|d| d == 1).collect();
        // Stored oldest first: slot i is the i-th oldest, as in a buffer filled from empty.
        buf.head = 0;
        buf.pushed = pushed.max(n as u64);
        Ok(buf)
    }

    /// [`ReplayBuffer::load`], then a check that the file holds `obs_dim`-long observations and
    /// `action_dim`-long actions (the error names the file and the tensor that differs).
    pub fn load_expecting(path: &Path, obs_dim: usize, action_dim: usize) -> Result<Self> {
        let buf = Self::load(path)?;
        let mismatch = |tensor: &str, got: usize, want: usize, what: &str| TuneError::Tensor {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            problem: format!("{got} columns, expected {what} {want}"),
        };
        if buf.obs_dim != obs_dim {
            return Err(mismatch("obs", buf.obs_dim, obs_dim, "obs_dim"));
        }
        if buf.action_dim != action_dim {
            return Err(mismatch("action", buf.action_dim, action_dim, "action_dim"));
        }
        Ok(buf)
    }
}
