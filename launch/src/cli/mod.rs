//! Subcommands of `rudder`.

pub mod bench;
pub mod eval;
pub mod launch;
pub mod model;
pub mod planner;
pub mod progress;
pub mod reward;
pub mod rl;
pub mod serve;
pub mod sim;
pub mod steer;
pub mod steer_sweep;
pub mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "rudder",
    version,
    about = "Rust robotics and embodied-policy control stack",
    long_about = "Rudder runs learned robot policies in a real-time loop, in simulation or on a UR5 \
through ROS 2, on one transformer + fine-tuning core.\n\nStart with:\n  rudder model verify --model fixtures/hf-tiny/llama"
)]
pub struct Cli {
    /// More logging (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Where Rerun data goes: flattened into the subcommands that record (`launch`, `steer sweep`)
/// and only those, so `--help` of every other command does not offer them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RecordingFlags {
    /// Write the Rerun recording here (default: the launch file's `recording.rrd`).
    #[arg(long, value_name = "FILE.rrd")]
    pub record: Option<std::path::PathBuf>,
    /// Stream to a running viewer (`rerun`, or `rerun --serve-grpc`) instead of writing a file,
    /// e.g. rerun+http://127.0.0.1:9876/proxy.
    #[arg(long, value_name = "URL", conflicts_with = "record")]
    pub connect: Option<String>,
    /// No Rerun recording at all.
    #[arg(long, conflicts_with_all = ["record", "connect"])]
    pub no_viz: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a launch file (embodiment, task, policy, recording) through the real-time loop.
    Launch(launch::LaunchArgs),
    /// Load, inspect and verify Hugging Face checkpoints.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Benchmarks, each beside its baseline.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Fine-tuning jobs (LoRA or full) with resumable checkpoints.
    #[command(subcommand)]
    Train(train::TrainCommand),
    /// Simulation campaigns.
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// Write a demonstration data set from the scripted experts.
    Demos(sim::DemosArgs),
    /// Serve a policy over openpi's websocket protocol (for openpi / LIBERO clients).
    Serve(serve::ServeArgs),
    /// Evaluate a trained VLA policy (flow or tokens head) in the tabletop simulator (held-out init states).
    Eval(eval::EvalArgs),
    /// Activation steering: vocabulary projection of FFN neurons, concept clusters, benchmark.
    #[command(subcommand)]
    Steer(steer::SteerCommand),
    /// The VLM success classifier's data: labelled frames from the simulator.
    #[command(subcommand)]
    Reward(RewardCommand),
}

#[derive(Debug, Subcommand)]
pub enum RewardCommand {
    /// Write labelled frames (scripted experts, perturbed experts as hard negatives, a VLA's
    /// rollouts), balanced to 50 % positives, for `rudder train reward`.
    Data(reward::DataArgs),
    /// Refit a trained classifier's temperature and threshold on a data set's validation split
    /// (rewrites its reward.json or calibration.json).
    Calibrate(reward::CalibrateArgs),
}

pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUDDER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Launch(l) => launch::run(l),
        Command::Model(m) => model::run(m),
        Command::Bench(b) => bench::run(b),
        Command::Train(t) => train::run(t),
        Command::Sim(s) => sim::run(s),
        Command::Demos(d) => sim::demos(d),
        Command::Serve(s) => serve::run(s),
        Command::Eval(e) => eval::run(e),
        Command::Steer(s) => steer::run(s),
        Command::Reward(RewardCommand::Data(d)) => reward::data(d),
        Command::Reward(RewardCommand::Calibrate(c)) => reward::recalibrate(c),
    }
}
