//! `cargo run -p rudder-robot --release --example bench_loop -- [--rate HZ] [--seconds S]
//! [--seed N] [--spin-us US] [--no-fifo] [--json]`: the loop benchmark until the CLI wires `rudder bench loop`.

use rudder_robot::bench::run_loop_bench_with;
use rudder_robot::control::TimingRequest;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let mut rate = 500.0;
    let mut seconds = 10.0;
    let mut seed = 0u64;
    let mut json = false;
    let mut timing = TimingRequest::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> Result<String, String> {
            args.next().ok_or_else(|| format!("{name} needs a value"))
        };
        let parsed: Result<(), String> = match a.as_str() {
            "--rate" => value("--rate").and_then(|v| {
                v.parse()
                    .map(|x| rate = x)
                    .map_err(|e| format!("--rate {v}: {e}"))
            }),
            "--seconds" => value("--seconds").and_then(|v| {
                v.parse()
                    .map(|x| seconds = x)
                    .map_err(|e| format!("--seconds {v}: {e}"))
            }),
            "--seed" => value("--seed").and_then(|v| {
                v.parse()
                    .map(|x| seed = x)
                    .map_err(|e| format!("--seed {v}: {e}"))
            }),
            "--spin-us" => value("--spin-us").and_then(|v| {
                v.parse()
                    .map(|x| timing.spin_window = Duration::from_micros(x))
                    .map_err(|e| format!("--spin-us {v}: {e}"))
            }),
            "--no-fifo" => {
                timing.fifo_priority = None;
                Ok(())
            }
            "--json" => {
                json = true;
                Ok(())
            }
            other => Err(format!("unknown argument {other}")),
        };
        if let Err(e) = parsed {
            eprintln!("bench_loop: {e}");
            return ExitCode::from(2);
        }
    }
    match run_loop_bench_with(rate, seconds, seed, timing) {
        Ok(r) => {
            if json {
                println!("{}", r.to_json());
            } else {
                println!("{}", r.summary());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench_loop: {e}");
            ExitCode::FAILURE
        }
    }
}
