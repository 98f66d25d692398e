//! The closed-loop score of every baseline planner in both modes, on generated scenarios and
//! on the same scenarios written as nuPlan-schema logs and loaded back: the table a change to
//! the simulator or the metrics is judged by.
//!
//! `cargo run --release -p rudder-sim --example driving_scores -- [SCENARIOS] [SEED]`

use rudder_sim::driving::campaign::{load_logs, write_generated_logs};
use rudder_sim::driving::{run_campaign, Mode, PlannerKind};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenarios = args.first().and_then(|a| a.parse().ok()).unwrap_or(48);
    let seed = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    match run(scenarios, seed) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(scenarios: usize, seed: u64) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile_dir()?;
    write_generated_logs(&dir, scenarios, seed)?;
    let logs = load_logs(&dir)?.len();
    println!(
        "{scenarios} generated scenarios (seed {seed}); {logs} loaded back from nuPlan-schema logs"
    );
    println!(
        "{:18} {:12} {:>10} {:>10}",
        "planner", "mode", "generated", "logs"
    );
    for planner in [
        PlannerKind::LogReplay,
        PlannerKind::ConstantVelocity,
        PlannerKind::Idm,
    ] {
        for mode in [Mode::NonReactive, Mode::Reactive] {
            let g = run_campaign(planner, scenarios, mode, seed, None)?;
            let l = run_campaign(planner, 0, mode, seed, Some(&dir))?;
            println!(
                "{:18} {:12} {:>10.4} {:>10.4}",
                format!("{planner:?}"),
                format!("{mode:?}"),
                g.score,
                l.score
            );
            println!(
                "json {}",
                serde_json::json!({"planner": planner, "mode": mode, "generated": g, "logs": l})
            );
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("rudder-driving-scores-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(dir)
}
