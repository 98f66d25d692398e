//! `rudder serve`: a policy server speaking openpi's websocket protocol (REFERENCE §9), so that
//! existing openpi clients (`openpi_client.websocket_client_policy`) can evaluate a Rudder policy.
//!
//! - `GET /healthz` answers `200 OK\n` on the same port.
//! - Every websocket connection is its own task. The server speaks first with a msgpack metadata
//!   map, then answers each request frame with one reply frame (strict lockstep).
//! - Bad input (non-msgpack bytes, a missing key, a wrong dtype or shape, a text frame, a frame
//!   over the size limit) gets a text frame naming the problem and the key, then close code 1011;
//!   the connection ends, the server keeps serving everyone else.
//! - The policy sits behind a mutex and runs on tokio's blocking pool, so inference never stalls
//!   the I/O of other connections; requests from several clients are served one at a time.
//!
//! The request keys, the state layout and the reply are documented in [`protocol`].

pub mod ndarray;
pub mod protocol;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rmpv::Value;
use rudder_policy::VlaPolicy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use protocol::Request;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Largest request frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Noise seed of every request: identical requests get identical actions.
    pub seed: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 << 20,
            seed: 0,
        }
    }
}

struct Shared {
    policy: Mutex<VlaPolicy>,
    cfg: ServeConfig,
    metadata: Vec<u8>,
    action_dims: usize,
}

/// The metadata map sent on connect.
pub fn metadata(policy: &VlaPolicy, cfg: &ServeConfig) -> Value {
    let s = |v: &str| Value::String(v.into());
    let n = |v: usize| Value::from(v as u64);
    Value::Map(vec![
        (s("server"), s("rudder")),
        (
            s("model_type"),
            s(if policy.head() == "tokens" {
                "vla_tokens"
            } else {
                "pi0"
            }),
        ),
        (s("policy_dir"), s(&policy.dir().display().to_string())),
        (s("action_horizon"), n(policy.action_horizon())),
        (s("action_dim"), n(reply_dims(policy))),
        (s("model_action_dim"), n(policy.action_dim())),
        (s("state_dim"), n(policy.state_dim())),
        (s("image_size"), n(policy.image_size())),
        (
            s("cameras"),
            Value::Array(policy.cameras().iter().map(|c| s(c)).collect()),
        ),
        (s("num_inference_steps"), n(policy.num_inference_steps())),
        (s("max_frame_bytes"), n(cfg.max_frame_bytes)),
    ])
}

/// Action values per reply row: the LIBERO 7 when the model has them, else all.
fn reply_dims(policy: &VlaPolicy) -> usize {
    policy.action_dim().min(7)
}

/// Serves `listener` until the process ends.
pub async fn serve(listener: TcpListener, policy: VlaPolicy, cfg: ServeConfig) {
    let shared = Arc::new(Shared {
        metadata: protocol::encode(&metadata(&policy, &cfg)),
        action_dims: reply_dims(&policy),
        policy: Mutex::new(policy),
        cfg,
    });
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, peer, shared).await {
                        tracing::info!("{peer}: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Whether the request on `stream` is `GET /healthz`, looking at its first line without
/// consuming it (so the websocket handshake still sees the whole request).
async fn is_healthz(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = stream.peek(&mut buf).await?;
        let head = &buf[..n];
        if n == 0 || head.contains(&b'\n') || n == buf.len() || Instant::now() > deadline {
            return Ok(head.starts_with(b"GET /healthz ") || head.starts_with(b"GET /healthz?"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    if is_healthz(&stream).await? {
        stream
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\
                  Connection: close\r\n\r\nOK\n",
            )
            .await?;
        stream.shutdown().await?;
        return Ok(());
    }
    let ws_cfg = WebSocketConfig::default()
        .max_message_size(Some(shared.cfg.max_frame_bytes))
        .max_frame_size(Some(shared.cfg.max_frame_bytes));
    let mut ws = tokio_tungstenite::accept_async_with_config(stream, Some(ws_cfg)).await?;
    tracing::info!("{peer}: connected");
    ws.send(Message::Binary(shared.metadata.clone().into()))
        .await?;
    while let Some(msg) = ws.next().await {
        let frame = match msg {
            Ok(Message::Binary(b)) => b,
            Ok(Message::Text(_)) => {
                return fail(
                    &mut ws,
                    "expected a binary msgpack frame, got a text frame",
                    Drain::Frames,
                )
                .await;
            }
            Ok(Message::Close(_)) => break,
            Ok(_) => continue, // ping/pong: tungstenite answers pings itself
            Err(WsError::Capacity(e)) => {
                let limit = shared.cfg.max_frame_bytes;
                let text = format!("request frame too large ({e}); the limit is {limit} bytes");
                return fail(&mut ws, &text, Drain::Raw).await;
            }
            Err(e) => return Err(e.into()),
        };
        let reply = match protocol::parse(&frame) {
            Err(e) => return fail(&mut ws, &e, Drain::Frames).await,
            Ok(Request::Ctrl(c)) => {
                tracing::info!("{peer}: {c}");
                protocol::ack_reply(&c)
            }
            Ok(Request::Infer {
                images,
                state,
                prompt,
            }) => match infer(&shared, images, state, prompt).await {
                Ok(v) => v,
                Err(e) => return fail(&mut ws, &e, Drain::Frames).await,
            },
        };
        ws.send(Message::Binary(protocol::encode(&reply).into()))
            .await?;
    }
    tracing::info!("{peer}: closed");
    Ok(())
}

async fn infer(
    shared: &Arc<Shared>,
    images: Vec<(&'static str, rudder_robot::ImageRgb8)>,
    state: Vec<f64>,
    prompt: String,
) -> Result<Value, String> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let policy = shared
            .policy
            .lock()
            .map_err(|_| "policy unavailable: an earlier inference panicked".to_string())?;
        // openpi key -> camera slot by position (agent view, then wrist).
        let named: Vec<(String, rudder_robot::ImageRgb8)> = images
            .into_iter()
            .zip(policy.cameras())
            .map(|((_, img), slot)| (slot.clone(), img))
            .collect();
        let t0 = Instant::now();
        let chunk = policy
            .infer_raw(&named, &state, &prompt, shared.cfg.seed)
            .map_err(|e| e.to_string())?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(protocol::actions_reply(&chunk, shared.action_dims, ms))
    })
    .await
    .map_err(|e| format!("inference task failed: {e}"))?
}

/// How to wait for the client's side of the close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Read websocket frames until the client's close (the normal closing handshake).
    Frames,
    /// After an oversized frame the websocket reader cannot go on: read and drop raw bytes until
    /// the client hangs up, so that the unread rest of the frame does not make the kernel reset
    /// the connection (which would lose the close frame on the client's side).
    Raw,
}

/// Sends `text` as a text frame, then closes with 1011 and waits briefly for the client's close.
async fn fail<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    text: &str,
    drain: Drain,
) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tracing::info!("closing with 1011: {text}");
    let _ = ws.send(Message::Text(text.to_string().into())).await;
    let _ = ws
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Error,
            reason: "".into(),
        })))
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        match drain {
            Drain::Frames => while let Some(Ok(_)) = ws.next().await {},
            Drain::Raw => {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = ws.get_mut().read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            }
        }
    })
    .await;
    Ok(())
}
