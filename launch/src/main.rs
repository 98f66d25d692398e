use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    rudder::tune_allocator();
    // candle parallelises element-wise ops on a spinning barrier pool of its own, beside the
    // rayon pool its matmuls use; on 2 cores the two fight (measured here: LoRA step 3.34 s ->
    // 0.93 s, forward s64 39 -> 28 ms with the pool off). Matmuls keep RAYON_NUM_THREADS.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let cli = rudder::cli::Cli::parse();
    rudder::cli::init_logging(cli.verbose);
    match rudder::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each once: many of our errors already quote their source in their
/// own message (`{path}: {source}`), which `{:#}` would print again.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
