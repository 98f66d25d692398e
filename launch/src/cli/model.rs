//! `rudder model ...`: checkpoint verification and inspection.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use rudder_tune::verify::{self, VerifyReport};

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Run a checkpoint on a reference file's inputs and compare every output it can produce.
    #[command(
        after_help = "Example:\n  rudder model verify --model fixtures/hf-tiny/llama\n  \
rudder model verify --model fixtures/hf-tiny/paligemma --reference fixtures/hf-tiny/paligemma/reference.safetensors --json"
    )]
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Model folder with config.json and model.safetensors (or a sharded index).
    #[arg(long)]
    pub model: PathBuf,
    /// Reference safetensors with in.* inputs and expected out.*, hf.hidden_states.*,
    /// layer.{i}.* tensors [default: MODEL/reference.safetensors].
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Largest absolute difference that passes.
    #[arg(long, default_value_t = 1e-4)]
    pub atol: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors): compares
    /// out.base_logits, out.lora_logits, out.merged_logits and merged.* weights [reference
    /// default: ADAPTER/reference.safetensors].
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Where to run: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(cmd: ModelCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ModelCommand::Verify(a) => verify_cmd(a),
    }
}

fn verify_cmd(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    if !(a.atol.is_finite() && a.atol >= 0.0) {
        anyhow::bail!("--atol must be a non-negative number, got {}", a.atol);
    }
    let device = verify::parse_device(&a.device)?;
    let report = match &a.adapter {
        Some(ad) => {
            let reference = a
                .reference
                .clone()
                .unwrap_or_else(|| verify::default_reference(ad));
            verify::verify_adapter(&a.model, ad, &reference, a.atol, &device)?
        }
        None => {
            let reference = a
                .reference
                .clone()
                .unwrap_or_else(|| verify::default_reference(&a.model));
            verify::verify_on(&a.model, &reference, a.atol, &device)?
        }
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(if report.pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_table(r: &VerifyReport) {
    println!("model      {} ({})", r.model, r.architecture);
    println!("reference  {}", r.reference);
    println!("atol       {:e}", r.atol);
    println!();
    let w = r
        .outputs
        .iter()
        .map(|o| o.name.len())
        .max()
        .unwrap_or(10)
        .max(6);
    println!("{:w$}  {:>12}  result", "output", "max_abs_diff");
    for o in &r.outputs {
        println!(
            "{:w$}  {:>12.3e}  {}",
            o.name,
            o.max_abs_diff,
            if o.pass { "ok" } else { "FAIL" }
        );
    }
    if !r.skipped.is_empty() {
        println!();
        for s in &r.skipped {
            println!("skipped {}: {}", s.name, s.reason);
        }
    }
    let failed = r.outputs.iter().filter(|o| !o.pass).count();
    println!();
    println!(
        "{}: {} compared, {} failed",
        if r.pass { "PASS" } else { "FAIL" },
        r.outputs.len(),
        failed
    );
}
