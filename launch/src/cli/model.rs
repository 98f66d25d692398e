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
    /// Intruder dimensions of a LoRA adapter: per adapted matrix, the top-k left singular
    /// vectors of W0 + dW whose max |cos| with every singular vector of W0 is below a threshold.
    #[command(
        after_help = "Example:\n  rudder model intruders --model fixtures/hf-tiny/llama --adapter fixtures/hf-tiny/llama_lora"
    )]
    Intruders(IntruderArgs),
}

#[derive(Debug, Args)]
pub struct IntruderArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// PEFT adapter folder.
    #[arg(long)]
    pub adapter: PathBuf,
    /// How many top singular vectors of the adapted matrix to test.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// A vector intrudes when its max |cos| with W0's singular vectors is below this.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    #[arg(long)]
    pub json: bool,
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
        ModelCommand::Intruders(a) => intruders_cmd(a),
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

fn intruders_cmd(a: IntruderArgs) -> anyhow::Result<ExitCode> {
    use rudder_tune::candle_core::Device;
    let mut loaded = rudder_tune::load::load_model(&a.model, &Device::Cpu)?;
    rudder_tune::peft::load_adapter(&mut loaded.model, &a.adapter, "default", &Device::Cpu)?;
    let mats = rudder_tune::peft::adapted_weights(&mut loaded.model, "default")?;
    let mut reports = Vec::new();
    for (module, w0, dw) in &mats {
        reports.push(rudder_tune::intruder::intruder_dimensions(
            module,
            w0,
            dw,
            a.k,
            a.threshold,
        )?);
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({"k": a.k, "threshold": a.threshold, "matrices": reports})
        );
    } else {
        println!(
            "{:50} {:>9}  max|cos| of the top-{} vectors",
            "module", "intruders", a.k
        );
        for r in &reports {
            let cos: Vec<String> = r.max_cos.iter().map(|c| format!("{c:.2}")).collect();
            println!(
                "{:50} {:>9}  {}",
                r.module,
                r.intruders.len(),
                cos.join(" ")
            );
        }
        let total: usize = reports.iter().map(|r| r.intruders.len()).sum();
        println!(
            "{total} intruder dimension(s) in {} adapted matrices",
            reports.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
