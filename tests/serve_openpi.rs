//! `rudder serve` against the real `openpi-client==0.1.2` (REFERENCE §9), installed by
//! scripts/setup-openpi.sh into .venv-openpi (or $RUDDER_OPENPI_VENV). The tests fail, not skip,
//! without it.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

mod common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let venv = std::env::var_os("RUDDER_OPENPI_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv-openpi"));
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "{} not found: run `bash scripts/setup-openpi.sh` (installs openpi-client==0.1.2) or set \
         RUDDER_OPENPI_VENV",
        py.display()
    );
    py
}

/// A running `rudder serve`, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Server {
    start_with(&root().join("fixtures/hf-tiny/pi0"), extra)
}

fn start_with(policy: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rudder"))
        .args(["serve", "--policy"])
        .arg(policy)
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn rudder serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let port = line
        .split("ws://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no ws:// URL in the first line: {line:?}"));
    Server { child, port }
}

fn run_py(script: &str, args: &[String]) -> String {
    let out = Command::new(python())
        .arg(root().join("tests/serve").join(script))
        .args(args)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{script} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn openpi_client_gets_deterministic_actions_and_acks() {
    let server = start(&[]);
    let health = http_get(server.port, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("\r\n\r\nOK\n"), "{health:?}");
    let out = run_py(
        "client_infer.py",
        &["127.0.0.1".into(), server.port.to_string()],
    );
    assert!(out.contains("OK (4, 6) float64"), "{out}");
    // A second client, after the first is gone, gets the same service.
    run_py(
        "client_infer.py",
        &["127.0.0.1".into(), server.port.to_string()],
    );
}

/// Both heads serve: a (barely trained) VLA-tokens checkpoint answers the real client with
/// LIBERO-shaped actions.
#[test]
fn openpi_client_gets_actions_from_a_tokens_checkpoint() {
    use rudder_policy::tokens::Decoding;
    use rudder_policy::train::{HeadKind, ModelSpec};
    let tmp = tempfile::tempdir().expect("tempdir");
    let spec = ModelSpec {
        head: HeadKind::Tokens,
        decoding: Decoding::Parallel,
        chunk: 3,
        ..ModelSpec::tiny()
    };
    let ckpt = common::tiny_checkpoint(tmp.path(), spec);
    let server = start_with(&ckpt, &[]);
    let out = run_py(
        "client_tokens.py",
        &["127.0.0.1".into(), server.port.to_string(), "3".into()],
    );
    assert!(out.contains("OK (3, 7) float64"), "{out}");
}

#[test]
fn bad_input_closes_1011_while_others_keep_getting_actions() {
    let server = start(&["--max-frame-mib", "1"]);
    let out = run_py(
        "bad_input.py",
        &[
            "127.0.0.1".into(),
            server.port.to_string(),
            (1usize << 20).to_string(),
        ],
    );
    assert!(out.contains("OK"), "{out}");
    // The server survived every refusal.
    assert!(http_get(server.port, "/healthz").ends_with("OK\n"));
}

#[test]
fn serve_reports_a_bad_policy_folder_and_documents_itself() {
    let out = Command::new(env!("CARGO_BIN_EXE_rudder"))
        .args(["serve", "--policy", "/nonexistent/policy", "--port", "0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/policy") && err.contains("config.json"),
        "{err}"
    );
    let help = Command::new(env!("CARGO_BIN_EXE_rudder"))
        .args(["serve", "--help"])
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("rudder serve --policy") && help.contains("/healthz"),
        "{help}"
    );
    assert!(Path::new(&root().join("scripts/setup-openpi.sh")).exists());
}
