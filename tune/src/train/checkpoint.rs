//! Checkpoint folders written atomically: everything goes into a hidden temporary folder, each
//! file is fsynced, the folder is renamed into place, and only then does `latest` (itself
//! replaced atomically) point at it. A run killed at any moment leaves the previous checkpoint
//! intact and loadable.

use std::path::{Path, PathBuf};

use crate::checkpoint::write_atomic;
use crate::error::{Result, TuneError};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TuneError + '_ {
    move |source| TuneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `root/name` through a temporary folder filled by `write`.
pub fn save_dir_atomic(
    root: &Path,
    name: &str,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(io(root))?;
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    write(&tmp)?;
    let dst = root.join(name);
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(io(&dst))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
    if let Ok(d) = std::fs::File::open(root) {
        let _ = d.sync_all();
    }
    write_atomic(&root.join("latest"), name.as_bytes())?;
    Ok(dst)
}

/// The folder `latest` points at, if any.
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    let p = root.join("latest");
    if !p.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&p).map_err(io(&p))?;
    let name = name.trim();
    if name.is_empty() || name.contains('/') {
        return Err(TuneError::Invalid(format!(
            "{}: does not name a checkpoint folder",
            p.display()
        )));
    }
    let dir = root.join(name);
    if !dir.is_dir() {
        return Err(TuneError::Invalid(format!(
            "{}: points at {}, which does not exist",
            p.display(),
            dir.display()
        )));
    }
    Ok(Some(dir))
}

/// A model folder to load: `path` itself when it holds `config.json`, else the checkpoint a
/// training run's `latest` names (which must hold one). The error says which of the two
/// `path` was expected to be.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join("config.json").is_file() {
        return Ok(path.to_path_buf());
    }
    match latest(path)? {
        Some(dir) if dir.join("config.json").is_file() => Ok(dir),
        Some(dir) => Err(TuneError::Invalid(format!(
            "{}: points at {}, which has no config.json",
            path.join("latest").display(),
            dir.display()
        ))),
        None => Err(TuneError::Invalid(format!(
            "{}: neither a checkpoint folder (config.json) nor a training run (latest)",
            path.display()
        ))),
    }
}

/// Removes all but the newest `keep` `checkpoint-*` folders.
pub fn prune(root: &Path, keep: usize) -> Result<()> {
    let mut dirs: Vec<(u64, PathBuf)> = std::fs::read_dir(root)
        .map_err(io(root))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.strip_prefix("checkpoint-")
                .and_then(|s| s.parse::<u64>().ok())
                .map(|s| (s, e.path()))
        })
        .collect();
    dirs.sort();
    let n = dirs.len();
    for (_, d) in dirs.into_iter().take(n.saturating_sub(keep)) {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(())
}
