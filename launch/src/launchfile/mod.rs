//! Launch files (`launch/*.toml`): what `rudder launch` runs — an embodiment, a task or scenario
//! set, a policy, the control rate, steering and recording. Parsed with serde (unknown fields
//! are errors) and then validated; every error names the file, the line and the field.

pub mod driving;
#[cfg(feature = "ros2")]
pub mod ros2;
pub mod run;

use rudder_robot::Ur5Model;
use rudder_sim::tabletop::{load_suite, Suite, TabletopSim, CONTROL_HZ};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// A launch-file mistake: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchError {
    pub file: String,
    /// 1-based; `None` when the mistake has no place in the file (missing file, missing section).
    pub line: Option<usize>,
    /// Dotted field path (`control.rate_hz`), empty when the file itself is the problem.
    pub field: String,
    pub message: String,
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for LaunchError {}

/// The embodiments a launch file can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum EmbodimentKind {
    #[serde(rename = "sim.tabletop")]
    SimTabletop,
    #[serde(rename = "sim.driving")]
    SimDriving,
    #[serde(rename = "ros2.ur5")]
    Ros2Ur5,
}

impl EmbodimentKind {
    pub fn name(self) -> &'static str {
        match self {
            EmbodimentKind::SimTabletop => "sim.tabletop",
            EmbodimentKind::SimDriving => "sim.driving",
            EmbodimentKind::Ros2Ur5 => "ros2.ur5",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Embodiment {
    pub kind: EmbodimentKind,
}

/// One tabletop task: suite, task index, episode (init state) and seed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    /// `spatial`, `object` or `goal`.
    pub suite: String,
    /// Index of the task in the suite (0-based).
    #[serde(default)]
    pub index: usize,
    /// Episode `k` uses init state `k mod 50` and manner variant `k`.
    #[serde(default)]
    pub episode: usize,
    #[serde(default)]
    pub seed: u64,
    /// Camera images (both cameras), pixels per side; 0 renders nothing.
    #[serde(default = "default_camera")]
    pub camera_size: u32,
}

fn default_camera() -> u32 {
    128
}

/// A driving scenario set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSection {
    /// nuPlan scenario types to generate (empty: all).
    #[serde(default)]
    pub types: Vec<String>,
    /// Scenarios per type.
    #[serde(default = "one")]
    pub count: usize,
    #[serde(default)]
    pub seed: u64,
    /// `open_loop`, `closed_loop_nonreactive` or `closed_loop_reactive`.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// A nuPlan-schema SQLite log to load instead of generated scenarios.
    #[serde(default)]
    pub db: Option<PathBuf>,
}

fn one() -> usize {
    1
}

fn default_mode() -> String {
    "closed_loop_nonreactive".into()
}

/// The UR5 behind the ROS 2 driver.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ros2Section {
    #[serde(default)]
    pub namespace: String,
    /// `ur5` (125 Hz) or `ur5e` (500 Hz).
    #[serde(default = "default_variant")]
    pub variant: String,
    #[serde(default = "default_controller")]
    pub controller: String,
}

fn default_variant() -> String {
    "ur5".into()
}

fn default_controller() -> String {
    "scaled_joint_trajectory_controller".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// The simulator's scripted expert (tabletop) or the rule-based planner (driving).
    Scripted,
    /// A trained checkpoint (Hugging Face layout); runs once the VLA issue lands.
    Checkpoint,
    /// The diffusion driving planner (`rudder train planner`), in the wall-clock loop with
    /// asynchronous inference (sim.driving only).
    Diffusion,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    pub kind: PolicyKind,
    /// Directory of `config.json` + `*.safetensors` (kind = "checkpoint").
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// Seconds between the points of a chunk and how many points (the future path drawn).
    #[serde(default = "default_horizon")]
    pub chunk_len: usize,
    /// Driving, kind = "scripted": `idm` (default), `constant_velocity` or `log_replay`.
    #[serde(default)]
    pub planner: Option<String>,
    /// kind = "diffusion": `dpm` (DPM-Solver++ 2M, default) or `ddim`.
    #[serde(default)]
    pub sampler: Option<String>,
    /// kind = "diffusion": solver steps per plan (default 10).
    #[serde(default)]
    pub solver_steps: Option<usize>,
    /// kind = "diffusion": classifier-guidance scale (default 0: none).
    #[serde(default)]
    pub guidance: Option<f64>,
}

fn default_horizon() -> usize {
    8
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// Ticks per second; default: the embodiment's own rate.
    #[serde(default)]
    pub rate_hz: Option<f64>,
    /// Upper bound on one episode's wall time, seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Ends each episode after this many control ticks (short demos and tests).
    #[serde(default)]
    pub max_ticks: Option<u64>,
}

fn default_timeout() -> f64 {
    120.0
}

impl Default for ControlSection {
    fn default() -> Self {
        Self {
            rate_hz: None,
            timeout_s: default_timeout(),
            max_ticks: None,
        }
    }
}

/// Activation steering of a checkpoint policy (REFERENCE §1): clusters of a dictionary
/// (`rudder steer clusters --model CKPT --out dict.toml`) set to their alphas at every
/// inference.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SteeringSection {
    #[serde(default)]
    pub enabled: bool,
    /// The steering dictionary (TOML).
    #[serde(default)]
    pub dictionary: Option<PathBuf>,
    /// Cluster name -> alpha, e.g. `alphas = { fast_10 = 4.0 }`.
    #[serde(default)]
    pub alphas: std::collections::BTreeMap<String, f32>,
}

/// A success classifier (`rudder train reward`) watching the tabletop episodes from the
/// cameras on its own thread: P(success) is recorded beside the simulator's truth, and each
/// episode reports when the classifier first said yes against when the predicate held.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardSection {
    /// Reward checkpoint folder or training run folder (its `latest`).
    pub model: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingSection {
    /// Where the `.rrd` goes (relative to the working directory).
    #[serde(default = "default_rrd")]
    pub rrd: PathBuf,
    /// Log camera images (the largest part of a recording).
    #[serde(default = "yes")]
    pub images: bool,
    /// Capacity of the control thread's record queue; records beyond it are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_rrd() -> PathBuf {
    PathBuf::from("rudder.rrd")
}

fn yes() -> bool {
    true
}

fn default_queue() -> usize {
    4096
}

impl Default for RecordingSection {
    fn default() -> Self {
        Self {
            rrd: default_rrd(),
            images: true,
            queue: default_queue(),
        }
    }
}

/// A parsed and validated launch file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchFile {
    pub embodiment: Embodiment,
    #[serde(default)]
    pub task: Option<TaskSection>,
    #[serde(default)]
    pub scenarios: Option<ScenarioSection>,
    #[serde(default)]
    pub ros2: Option<Ros2Section>,
    pub policy: PolicySection,
    #[serde(default)]
    pub control: ControlSection,
    #[serde(default)]
    pub steering: SteeringSection,
    #[serde(default)]
    pub reward: Option<RewardSection>,
    #[serde(default)]
    pub recording: RecordingSection,
}

impl LaunchFile {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<LaunchFile, LaunchError> {
        let file = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| LaunchError {
            file: file.clone(),
            line: None,
            field: String::new(),
            message: format!("cannot read the launch file: {e}"),
        })?;
        Self::parse(&file, &src)
    }

    /// Parses and validates launch-file text; `file` names it in errors.
    pub fn parse(file: &str, src: &str) -> Result<LaunchFile, LaunchError> {
        let lf: LaunchFile = toml::from_str(src).map_err(|e| from_toml(file, src, &e))?;
        lf.validate(file, src)?;
        Ok(lf)
    }

    /// The control rate this file asks for: its own, or the one its embodiment runs at (the
    /// simulator's step, the driving scenario's step, the arm controller's streaming rate).
    pub fn rate_hz(&self) -> f64 {
        self.control.rate_hz.unwrap_or(match self.embodiment.kind {
            EmbodimentKind::SimTabletop => TabletopSim::RATE_HZ,
            EmbodimentKind::SimDriving => 1.0 / rudder_sim::driving::scenario::DT,
            EmbodimentKind::Ros2Ur5 => self.ur5_model().control_rate_hz(),
        })
    }

    /// The arm model the `[ros2]` section names (UR5 unless it says "ur5e").
    fn ur5_model(&self) -> Ur5Model {
        if self.ros2.as_ref().is_some_and(|r| r.variant == "ur5e") {
            Ur5Model::ur5e()
        } else {
            Ur5Model::ur5()
        }
    }

    fn validate(&self, file: &str, src: &str) -> Result<(), LaunchError> {
        let err = |section: &str, key: &str, message: String| LaunchError {
            file: file.to_string(),
            line: line_of(src, section, key),
            field: if key.is_empty() {
                section.to_string()
            } else {
                format!("{section}.{key}")
            },
            message,
        };
        let kind = self.embodiment.kind;
        let need = |present: bool, section: &str| {
            if present {
                Ok(())
            } else {
                Err(LaunchError {
                    file: file.to_string(),
                    line: line_of(src, "embodiment", "kind"),
                    field: section.to_string(),
                    message: format!("embodiment `{}` needs a [{section}] section", kind.name()),
                })
            }
        };
        let forbid = |present: bool, section: &str| {
            if present {
                Err(err(
                    section,
                    "",
                    format!("[{section}] does not apply to embodiment `{}`", kind.name()),
                ))
            } else {
                Ok(())
            }
        };
        match kind {
            EmbodimentKind::SimTabletop => {
                need(self.task.is_some(), "task")?;
                forbid(self.scenarios.is_some(), "scenarios")?;
                forbid(self.ros2.is_some(), "ros2")?;
            }
            EmbodimentKind::SimDriving => {
                need(self.scenarios.is_some(), "scenarios")?;
                forbid(self.task.is_some(), "task")?;
                forbid(self.ros2.is_some(), "ros2")?;
            }
            EmbodimentKind::Ros2Ur5 => {
                need(self.task.is_some(), "task")?;
                forbid(self.scenarios.is_some(), "scenarios")?;
            }
        }
        if let Some(t) = &self.task {
            let suite = Suite::parse(&t.suite).map_err(|e| err("task", "suite", e.to_string()))?;
            let tasks = load_suite(suite).map_err(|e| err("task", "suite", e.to_string()))?;
            if t.index >= tasks.len() {
                return Err(err(
                    "task",
                    "index",
                    format!(
                        "suite `{}` has {} tasks (0..={}), got {}",
                        suite.name(),
                        tasks.len(),
                        tasks.len().saturating_sub(1),
                        t.index
                    ),
                ));
            }
            if t.camera_size > 1024 {
                return Err(err(
                    "task",
                    "camera_size",
                    format!("at most 1024 pixels, got {}", t.camera_size),
                ));
            }
        }
        if let Some(s) = &self.scenarios {
            if s.count == 0 {
                return Err(err("scenarios", "count", "must be at least 1".into()));
            }
            const MODES: [&str; 3] = [
                "open_loop",
                "closed_loop_nonreactive",
                "closed_loop_reactive",
            ];
            if !MODES.contains(&s.mode.as_str()) {
                return Err(err(
                    "scenarios",
                    "mode",
                    format!("unknown mode `{}` (known: {})", s.mode, MODES.join(", ")),
                ));
            }
            let known = rudder_sim::driving::generator::SCENARIO_TYPES;
            if let Some(bad) = s.types.iter().find(|t| !known.contains(&t.as_str())) {
                return Err(err(
                    "scenarios",
                    "types",
                    format!(
                        "unknown scenario type `{bad}` (known: {})",
                        known.join(", ")
                    ),
                ));
            }
        }
        if let Some(p) = &self.policy.planner {
            if rudder_sim::driving::PlannerKind::parse(p).is_none() {
                return Err(err(
                    "policy",
                    "planner",
                    format!("unknown planner `{p}` (known: idm, constant_velocity, log_replay)"),
                ));
            }
        }
        if let Some(r) = &self.ros2 {
            if r.variant != "ur5" && r.variant != "ur5e" {
                return Err(err(
                    "ros2",
                    "variant",
                    format!("unknown variant `{}` (known: ur5, ur5e)", r.variant),
                ));
            }
            const CONTROLLERS: [&str; 3] = [
                "scaled_joint_trajectory_controller",
                "forward_position_controller",
                "forward_velocity_controller",
            ];
            if !CONTROLLERS.contains(&r.controller.as_str()) {
                return Err(err(
                    "ros2",
                    "controller",
                    format!(
                        "unknown controller `{}` (known: {})",
                        r.controller,
                        CONTROLLERS.join(", ")
                    ),
                ));
            }
        }
        if let Some(rate) = self.control.rate_hz {
            if !(rate.is_finite() && rate > 0.0 && rate <= 10_000.0) {
                return Err(err(
                    "control",
                    "rate_hz",
                    format!("need 0 < rate_hz <= 10000, got {rate}"),
                ));
            }
            if kind == EmbodimentKind::SimTabletop && rate != CONTROL_HZ {
                return Err(err(
                    "control",
                    "rate_hz",
                    format!(
                        "sim.tabletop advances one {CONTROL_HZ} Hz step per command, so the loop \
                         must run at {CONTROL_HZ} Hz (got {rate}); omit it to use the default"
                    ),
                ));
            }
        }
        if !(self.control.timeout_s.is_finite() && self.control.timeout_s > 0.0) {
            return Err(err(
                "control",
                "timeout_s",
                format!(
                    "need a positive number of seconds, got {}",
                    self.control.timeout_s
                ),
            ));
        }
        if self.control.max_ticks == Some(0) {
            return Err(err("control", "max_ticks", "must be at least 1".into()));
        }
        match self.policy.kind {
            PolicyKind::Checkpoint if self.policy.checkpoint.is_none() => {
                return Err(err(
                    "policy",
                    "checkpoint",
                    "kind = \"checkpoint\" needs `checkpoint = \"DIR\"`".into(),
                ));
            }
            PolicyKind::Diffusion if self.policy.checkpoint.is_none() => {
                return Err(err(
                    "policy",
                    "checkpoint",
                    "kind = \"diffusion\" needs `checkpoint = \"DIR\"` (from `rudder train \
                     planner`)"
                        .into(),
                ));
            }
            PolicyKind::Diffusion if self.embodiment.kind != EmbodimentKind::SimDriving => {
                return Err(err(
                    "policy",
                    "kind",
                    "kind = \"diffusion\" is the driving planner: embodiment.kind = \"sim.driving\""
                        .into(),
                ));
            }
            PolicyKind::Scripted if self.policy.checkpoint.is_some() => {
                return Err(err(
                    "policy",
                    "checkpoint",
                    "only used with kind = \"checkpoint\"".into(),
                ));
            }
            _ => {}
        }
        let diffusion_only = [
            ("sampler", self.policy.sampler.is_some()),
            ("solver_steps", self.policy.solver_steps.is_some()),
            ("guidance", self.policy.guidance.is_some()),
        ];
        if self.policy.kind != PolicyKind::Diffusion {
            if let Some((f, _)) = diffusion_only.iter().find(|(_, set)| *set) {
                return Err(err(
                    "policy",
                    f,
                    "only used with kind = \"diffusion\"".into(),
                ));
            }
        }
        if let Some(s) = &self.policy.sampler {
            if rudder_policy::driving::SamplerKind::parse(s).is_none() {
                return Err(err(
                    "policy",
                    "sampler",
                    format!("unknown sampler `{s}` (known: dpm, ddim)"),
                ));
            }
        }
        if let Some(n) = self.policy.solver_steps {
            if !(1..=1000).contains(&n) {
                return Err(err(
                    "policy",
                    "solver_steps",
                    format!("need 1..=1000, got {n}"),
                ));
            }
        }
        if let Some(g) = self.policy.guidance {
            if !(g.is_finite() && (0.0..=1000.0).contains(&g)) {
                return Err(err("policy", "guidance", format!("need 0..=1000, got {g}")));
            }
        }
        if self.policy.chunk_len == 0 || self.policy.chunk_len > 256 {
            return Err(err(
                "policy",
                "chunk_len",
                format!("need 1..=256 points, got {}", self.policy.chunk_len),
            ));
        }
        if self.steering.enabled {
            if self.policy.kind != PolicyKind::Checkpoint {
                return Err(err(
                    "steering",
                    "enabled",
                    "steering needs a model: policy.kind = \"checkpoint\"".into(),
                ));
            }
            if self.steering.dictionary.is_none() {
                return Err(err(
                    "steering",
                    "dictionary",
                    "enabled = true needs `dictionary = \"dict.toml\"` (from `rudder steer \
                     clusters --model CKPT --out dict.toml`)"
                        .into(),
                ));
            }
            if self.steering.alphas.is_empty() {
                return Err(err(
                    "steering",
                    "alphas",
                    "enabled = true needs at least one cluster, e.g. `alphas = { fast = 4.0 }`"
                        .into(),
                ));
            }
            if let Some((n, a)) = self.steering.alphas.iter().find(|(_, a)| !a.is_finite()) {
                return Err(err(
                    "steering",
                    "alphas",
                    format!("`{n}` = {a} is not finite"),
                ));
            }
        }
        if self.reward.is_some() {
            let cameras = self.task.as_ref().is_some_and(|t| t.camera_size > 0);
            if self.embodiment.kind != EmbodimentKind::SimTabletop || !cameras {
                return Err(err(
                    "reward",
                    "model",
                    "the success classifier reads the cameras: it needs embodiment \
                     \"sim.tabletop\" with task.camera_size > 0"
                        .into(),
                ));
            }
        }
        if self.recording.queue == 0 || self.recording.queue > 1 << 20 {
            return Err(err(
                "recording",
                "queue",
                format!("need 1..=1048576 records, got {}", self.recording.queue),
            ));
        }
        if self.recording.rrd.as_os_str().is_empty() {
            return Err(err("recording", "rrd", "empty path".into()));
        }
        Ok(())
    }
}

/// Turns a toml/serde error into one that names the line and, where toml knows it, the field.
fn from_toml(file: &str, src: &str, e: &toml::de::Error) -> LaunchError {
    let line = e.span().map(|s| line_at(src, s.start));
    let message = e.message().trim().to_string();
    // serde names the offending key in backticks (`unknown field `x``, `missing field `y``);
    // otherwise the key is the one written on the error's line.
    let field = backticked(&message)
        .filter(|_| message.starts_with("unknown field") || message.starts_with("missing field"))
        .or_else(|| {
            e.span()
                .and_then(|s| key_on_line(src, s.start))
                .map(|(section, key)| {
                    if section.is_empty() {
                        key
                    } else {
                        format!("{section}.{key}")
                    }
                })
        })
        .unwrap_or_default();
    LaunchError {
        file: file.to_string(),
        line,
        field,
        message,
    }
}

fn backticked(s: &str) -> Option<String> {
    let a = s.find('`')?;
    let b = s[a + 1..].find('`')?;
    Some(s[a + 1..a + 1 + b].to_string())
}

/// 1-based line of byte offset `at`.
fn line_at(src: &str, at: usize) -> usize {
    src.as_bytes()
        .iter()
        .take(at.min(src.len()))
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn strip_comment(line: &str) -> &str {
    line.split('#').next().unwrap_or("").trim()
}

/// The table header in force at byte `at` and the key written on that line.
fn key_on_line(src: &str, at: usize) -> Option<(String, String)> {
    let target = line_at(src, at);
    let mut section = String::new();
    for (i, raw) in src.lines().enumerate() {
        let l = strip_comment(raw);
        if l.starts_with('[') {
            section = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
        if i + 1 == target {
            let key = l.split('=').next()?.trim();
            if key.is_empty() || key.starts_with('[') || !l.contains('=') {
                return None;
            }
            return Some((section, key.to_string()));
        }
    }
    None
}

/// 1-based line where `key` is set inside `[section]` (or the header line when `key` is empty
/// or absent).
fn line_of(src: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    let mut header = None;
    for (i, raw) in src.lines().enumerate() {
        let l = strip_comment(raw);
        if l.starts_with('[') {
            current = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            if current == section {
                header = Some(i + 1);
            }
            continue;
        }
        if current == section && !key.is_empty() {
            if let Some((k, _)) = l.split_once('=') {
                if k.trim() == key {
                    return Some(i + 1);
                }
            }
        }
        // Inline form at top level: `section.key = ...`.
        if current.is_empty() {
            if let Some((k, _)) = l.split_once('=') {
                if k.trim() == format!("{section}.{key}") {
                    return Some(i + 1);
                }
            }
        }
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_found() {
        let src = "[a]\nx = 1\n\n[b]\n# c\ny = 2 # z\n";
        assert_eq!(line_of(src, "b", "y"), Some(6));
        assert_eq!(line_of(src, "b", "q"), Some(4));
        assert_eq!(line_at(src, 0), 1);
        assert_eq!(key_on_line(src, 5), Some(("a".into(), "x".into())));
    }
}
