//! Loading and saving safetensors with errors that name the file and the tensor, and a candle
//! `VarBuilder` backend over loaded weights so models keep the Hub's parameter names.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::error::{Result, TuneError};

/// The tensors of one or several safetensors files, each remembering its file.
#[derive(Debug, Clone, Default)]
pub struct TensorStore {
    tensors: HashMap<String, (Tensor, usize)>,
    files: Vec<PathBuf>,
    metadata: HashMap<String, String>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TuneError + '_ {
    move |source| TuneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl TensorStore {
    /// Reads a whole safetensors file; a truncated or corrupt file is an error naming it.
    pub fn load_file(path: &Path, device: &Device) -> Result<Self> {
        let mut store = Self::default();
        store.add_file(path, device)?;
        Ok(store)
    }

    pub fn add_file(&mut self, path: &Path, device: &Device) -> Result<()> {
        use candle_core::safetensors::Load;
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let st_err = |msg: String| TuneError::Safetensors {
            path: path.to_path_buf(),
            msg,
        };
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| st_err(e.to_string()))?;
        if let Some(meta) = header.metadata() {
            for (k, v) in meta {
                self.metadata.insert(k.clone(), v.clone());
            }
        }
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| st_err(e.to_string()))?;
        let idx = self.files.len();
        self.files.push(path.to_path_buf());
        for (name, view) in st.tensors() {
            let t = view.load(device).map_err(|e| TuneError::Tensor {
                path: path.to_path_buf(),
                tensor: name.clone(),
                problem: e.to_string(),
            })?;
            self.tensors.insert(name, (t, idx));
        }
        Ok(())
    }

    /// Loads the weights of a Hugging Face model folder: `model.safetensors`, or the shards
    /// listed by `model.safetensors.index.json`.
    pub fn load_model_dir(dir: &Path, device: &Device) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let mut store = Self::default();
        if single.exists() {
            store.add_file(&single, device)?;
        } else if index.exists() {
            let cfg = crate::config::JsonConfig::load(&index)?;
            let map = cfg
                .get("weight_map")
                .and_then(|v| v.as_object())
                .ok_or_else(|| cfg.field_error("weight_map", "missing or not an object"))?;
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            shards.sort();
            shards.dedup();
            for s in shards {
                store.add_file(&dir.join(&s), device)?;
            }
        } else {
            return Err(TuneError::Io {
                path: single,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors (nor model.safetensors.index.json) in the model folder",
                ),
            });
        }
        Ok(store)
    }

    pub fn from_tensors(tensors: HashMap<String, Tensor>, origin: &Path) -> Self {
        Self {
            tensors: tensors.into_iter().map(|(k, v)| (k, (v, 0))).collect(),
            files: vec![origin.to_path_buf()],
            metadata: HashMap::new(),
        }
    }

    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn origin(&self) -> PathBuf {
        self.files.first().cloned().unwrap_or_default()
    }

    fn file_of(&self, name: &str) -> PathBuf {
        match self.tensors.get(name) {
            Some((_, i)) => self.files.get(*i).cloned().unwrap_or_default(),
            None => self.origin(),
        }
    }

    /// The tensor, or an error naming the file and the tensor.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .map(|(t, _)| t)
            .ok_or_else(|| TuneError::Tensor {
                path: self.origin(),
                tensor: name.to_string(),
                problem: "missing".into(),
            })
    }

    pub fn opt(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name).map(|(t, _)| t)
    }

    /// Refuses a store with a NaN or infinite value in a float tensor, naming the tensor
    /// (a diverged run's weights load fine and then produce NaNs everywhere).
    pub fn check_finite(&self) -> Result<()> {
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        for name in names {
            let t = &self.tensors[name].0;
            if !is_float(t.dtype()) {
                continue;
            }
            let bad = t
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| self.tensor_error(name, e.to_string()))?
                .iter()
                .filter(|v| !v.is_finite())
                .count();
            if bad > 0 {
                return Err(self.tensor_error(
                    name,
                    format!("{bad} non-finite values (NaN or infinite): a diverged run?"),
                ));
            }
        }
        Ok(())
    }

    pub fn tensor_error(&self, name: &str, problem: impl Into<String>) -> TuneError {
        TuneError::Tensor {
            path: self.file_of(name),
            tensor: name.to_string(),
            problem: problem.into(),
        }
    }

    /// A `VarBuilder` whose lookups check shape and dtype and report the file on error.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }
}

fn is_float(d: DType) -> bool {
    matches!(d, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
}

impl SimpleBackend for TensorStore {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "{}: tensor `{name}`: shape {:?}, expected {:?}",
                self.file_of(name).display(),
                t.dims(),
                s.dims()
            );
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let Some((t, _)) = self.tensors.get(name) else {
            candle_core::bail!("{}: tensor `{name}`: missing", self.file_of(name).display());
        };
        if !is_float(t.dtype()) {
            candle_core::bail!(
                "{}: tensor `{name}`: dtype {:?}, expected a floating-point tensor",
                self.file_of(name).display(),
                t.dtype()
            );
        }
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Writes a safetensors file atomically: a temporary file in the same folder, fsync, rename,
/// fsync of the folder. A crash at any point leaves either the old file or the new one.
pub fn save_safetensors_atomic(
    tensors: &HashMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut views = Vec::with_capacity(names.len());
    for n in names {
        let t = &tensors[n];
        let t = t.to_device(&Device::Cpu).map_err(|e| TuneError::Tensor {
            path: path.to_path_buf(),
            tensor: n.clone(),
            problem: e.to_string(),
        })?;
        views.push((n.clone(), t));
    }
    let bytes = safetensors::serialize(views.iter().map(|(n, t)| (n.as_str(), t)), metadata)
        .map_err(|e| TuneError::Safetensors {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

/// Atomic file replacement used for every artefact a run must not lose.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let file_name = path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
