//! Shared by the integration tests that need a trained VLA checkpoint.

use std::path::{Path, PathBuf};

use rudder_policy::dataset::DemoDataset;
use rudder_policy::train::{ModelSpec, TrainConfig, VlaTrainer};
use rudder_sim::tabletop::{write_demos, CameraConfig, Suite};

/// Writes one 32 px expert episode per spatial task under `dir/demos`, takes one optimiser
/// step of a `spec` model on them and returns the checkpoint folder (under `dir/run`).
pub fn tiny_checkpoint(dir: &Path, spec: ModelSpec) -> PathBuf {
    let cams = CameraConfig {
        width: 32,
        height: 32,
    };
    write_demos(Suite::Spatial, 1, &dir.join("demos"), 0, cams).expect("demos");
    let data = DemoDataset::load(&dir.join("demos"), true).expect("data");
    let cfg = TrainConfig {
        model: spec,
        steps: 2,
        batch_size: 4,
        ..TrainConfig::default()
    };
    let mut tr = VlaTrainer::new(cfg, &data).expect("trainer");
    tr.step(&data).expect("step");
    tr.save(&dir.join("run"), 1, &data).expect("save")
}

/// A steering dictionary for [`tiny_checkpoint`]'s model with one cluster, `all_l0`: every
/// neuron of layer 0, a strong, certain intervention. (In pi0 the action expert reads the
/// prefix's keys and values at each layer's input, so the last layer's FFN output reaches
/// nothing: steering there is a no-op.) Written to `dir/dict.toml`.
#[allow(dead_code)] // not every test binary that includes this module steers
pub fn layer0_dictionary(dir: &Path) -> PathBuf {
    let dict = dir.join("dict.toml");
    let ids: Vec<String> = (0..128).map(|i| i.to_string()).collect();
    std::fs::write(
        &dict,
        format!(
            "[meta]\nmodel = \"x\"\nd_ff = 128\nnum_layers = 2\n\n[clusters]\nall_l0 = [{}]\n",
            ids.join(", ")
        ),
    )
    .expect("dict");
    dict
}
