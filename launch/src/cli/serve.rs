//! `rudder serve`: an openpi-compatible websocket policy server (see `rudder::serve`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::serve::{serve, ServeConfig};

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  rudder serve --policy fixtures/hf-tiny/pi0 --port 8000\n\
then from Python (pip install openpi-client==0.1.2):\n  \
from openpi_client import websocket_client_policy as wcp\n  \
c = wcp.WebsocketClientPolicy(\"127.0.0.1\", 8000); c.infer(obs)[\"actions\"]\n\
Health check: curl http://127.0.0.1:8000/healthz"
)]
pub struct ServeArgs {
    /// Policy checkpoint folder (pi0: config.json + model.safetensors, optional
    /// normalization.json and policy.json).
    #[arg(long)]
    pub policy: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Port to listen on (0: any free port; the URL printed says which).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Largest request frame accepted, in MiB; larger ones are refused with close code 1011.
    #[arg(long, default_value_t = 16)]
    pub max_frame_mib: usize,
    /// Noise seed used for every request (identical requests give identical actions).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if args.max_frame_mib == 0 {
        anyhow::bail!("--max-frame-mib must be > 0");
    }
    let dir = rudder_tune::train::checkpoint::resolve(&args.policy)?;
    let policy = rudder_policy::VlaPolicy::load(&dir)
        .with_context(|| format!("loading policy {}", dir.display()))?;
    let cfg = ServeConfig {
        max_frame_bytes: args
            .max_frame_mib
            .checked_mul(1 << 20)
            .context("--max-frame-mib is too large")?,
        seed: args.seed,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.bind.as_str(), args.port))
            .await
            .with_context(|| format!("binding {}:{}", args.bind, args.port))?;
        let addr = listener.local_addr()?;
        println!("rudder serve: listening on ws://{addr} (health: http://{addr}/healthz)");
        std::io::stdout().flush()?;
        serve(listener, policy, cfg).await;
        Ok(ExitCode::SUCCESS)
    })
}
