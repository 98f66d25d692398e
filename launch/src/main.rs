use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    rudder::tune_allocator();
    let cli = rudder::cli::Cli::parse();
    rudder::cli::init_logging(cli.verbose);
    match rudder::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
