//! `rudder sim ur5-driver` (cargo feature `ros2`): the tabletop simulator's UR5 behind the
//! Universal Robots ROS 2 driver's topic interface, so `rudder launch launch/ur5.toml` (or any
//! ROS 2 client) runs the closed loop over ROS 2.

use anyhow::Context;
use clap::Args;
use rudder_sim::ros2_driver::{run_sim_driver, SimDriverConfig};
use rudder_sim::tabletop::{load_suite, CameraConfig, Suite, TabletopEnv};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
#[command(after_help = "Example (two shells, same ROS_DOMAIN_ID):\n  \
rudder sim ur5-driver --suite spatial --index 2 --seed 7 --exit-when-done\n  \
rudder launch launch/ur5.toml\n\n\
Publishes /joint_states (with a `gripper` joint), /speed_scaling_state_broadcaster/speed_scaling\n\
and /camera/{agentview,wrist}/image_raw; accepts /forward_position_controller/commands,\n\
/forward_velocity_controller/commands, /scaled_joint_trajectory_controller/joint_trajectory\n\
and /rudder/gripper_command.")]
pub struct Ur5DriverArgs {
    /// spatial, object or goal.
    #[arg(long, default_value = "spatial")]
    pub suite: String,
    /// Task in the suite (0-based).
    #[arg(long, default_value_t = 2)]
    pub index: usize,
    /// Init state (mod 50) and manner variant.
    #[arg(long, default_value_t = 0)]
    pub episode: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// 125 (UR5, CB3) or 500 (UR5e).
    #[arg(long, default_value_t = 125.0)]
    pub rate: f64,
    /// Speed scaling the driver reports and applies (0..1), like the teach pendant's slider.
    #[arg(long, default_value_t = 1.0)]
    pub speed_scaling: f64,
    /// Camera images, pixels per side (0: none).
    #[arg(long, default_value_t = 64)]
    pub camera_size: u32,
    /// Stop once the task succeeds or its step budget is spent (prints the result).
    #[arg(long)]
    pub exit_when_done: bool,
    /// Stop after this many seconds.
    #[arg(long)]
    pub timeout: Option<f64>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Release);
}

/// Ctrl-C / SIGTERM end the driver cleanly (its node thread must be joined before exit).
fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

pub fn run(a: Ur5DriverArgs) -> anyhow::Result<ExitCode> {
    let suite = Suite::parse(&a.suite)?;
    let tasks = load_suite(suite).map_err(|e| anyhow::anyhow!("{e}"))?;
    let task = tasks.get(a.index).with_context(|| {
        format!(
            "--index {}: suite {} has {} tasks",
            a.index,
            suite.name(),
            tasks.len()
        )
    })?;
    let cams = (a.camera_size > 0).then_some(CameraConfig {
        width: a.camera_size,
        height: a.camera_size,
    });
    let env =
        TabletopEnv::new(task, a.seed, a.episode, cams).map_err(|e| anyhow::anyhow!("{e}"))?;
    let instruction = env.instruction().to_string();
    let mut cfg = SimDriverConfig {
        rate_hz: a.rate,
        speed_scaling: a.speed_scaling,
        // A policy reaching the arm through DDS lags the in-process expert.
        budget_scale: 4.0,
        ..SimDriverConfig::default()
    };
    if cams.is_none() {
        cfg.cameras.clear();
    }
    install_signal_handlers();
    let driver = run_sim_driver(env, cfg).context("starting the simulated UR5 driver")?;
    println!(
        "simulated UR5 driver at {} Hz: {} · \"{instruction}\" (Ctrl-C stops)",
        a.rate, task.id
    );
    let t0 = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let st = driver.status();
        if INTERRUPTED.load(Ordering::Acquire) {
            break;
        }
        if a.exit_when_done && st.done {
            break;
        }
        if a.timeout.is_some_and(|t| t0.elapsed().as_secs_f64() >= t) {
            break;
        }
    }
    let st = driver.status();
    driver.stop();
    println!(
        "{}: {} after {} simulator steps, {} driver ticks, {} commands received ({} refused), \
         {:.1} s",
        task.id,
        if st.success { "SUCCESS" } else { "not done" },
        st.env_steps,
        st.ticks,
        st.commands_received,
        st.commands_refused,
        t0.elapsed().as_secs_f64()
    );
    Ok(if st.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
