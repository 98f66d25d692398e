//! openpi requests and replies (REFERENCE §9), as msgpack values.
//!
//! LIBERO observation keys and how they reach the policy:
//!
//! | key                        | type                  | policy input                        |
//! |----------------------------|-----------------------|-------------------------------------|
//! | `observation/image`        | uint8 `[H, W, 3]`     | camera slot 0 (agent view), required |
//! | `observation/wrist_image`  | uint8 `[H, W, 3]`     | camera slot 1 (wrist), optional: masked when absent |
//! | `observation/state`        | float64/32 `[n]`      | state, required (LIBERO n = 8: eef pos 3, axis-angle 3, gripper qpos 2), normalised then zero-padded / truncated to the model's `max_state_dim` |
//! | `prompt`                   | str                   | the instruction                      |
//!
//! Other keys are ignored. The reply is `{"actions": float64 [H, D], "server_timing":
//! {"infer_ms": f64}}` with H the model's chunk length and D = 7 (the LIBERO action: delta
//! position 3, delta axis-angle 3, gripper) when the model has >= 7 action dims, else all of them.
//! `{"__ctrl__": "episode_start" | "episode_end", ...}` is answered `{"__ack__": <ctrl>}`.

use rmpv::Value;
use rudder_robot::ImageRgb8;

use super::ndarray::{self, DType, NdArray};

pub const IMAGE: &str = "observation/image";
pub const WRIST: &str = "observation/wrist_image";
pub const STATE: &str = "observation/state";
pub const PROMPT: &str = "prompt";
pub const CTRL: &str = "__ctrl__";
/// Longest state vector accepted (a guard; LIBERO sends 8).
pub const MAX_STATE: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Ctrl(String),
    Infer {
        /// (openpi key, image): slot 0 first, then the wrist camera if sent.
        images: Vec<(&'static str, ImageRgb8)>,
        state: Vec<f64>,
        prompt: String,
    },
}

/// Decodes one client frame. Errors name the key at fault.
pub fn parse(frame: &[u8]) -> Result<Request, String> {
    let mut rd = frame;
    let value = rmpv::decode::read_value(&mut rd)
        .map_err(|e| format!("request is not valid msgpack: {e}"))?;
    if !rd.is_empty() {
        return Err(format!(
            "request has {} bytes after its msgpack value",
            rd.len()
        ));
    }
    let Value::Map(map) = value else {
        return Err(format!(
            "request must be a msgpack map, got {}",
            ndarray::kind(&value)
        ));
    };
    if let Some(c) = ndarray::get(&map, CTRL) {
        return match c.as_str() {
            Some(s @ ("episode_start" | "episode_end")) => Ok(Request::Ctrl(s.to_string())),
            _ => Err(format!(
                "key `{CTRL}`: expected \"episode_start\" or \"episode_end\", got {c}"
            )),
        };
    }
    let required = |key: &str| {
        ndarray::get(&map, key).ok_or_else(|| format!("key `{key}`: missing from the request"))
    };
    let mut images = vec![(IMAGE, image(IMAGE, required(IMAGE)?)?)];
    if let Some(w) = ndarray::get(&map, WRIST) {
        images.push((WRIST, image(WRIST, w)?));
    }
    let st = ndarray::decode(STATE, required(STATE)?)?;
    if st.dtype == DType::U8 || st.shape.len() != 1 || st.shape[0] == 0 || st.shape[0] > MAX_STATE {
        return Err(format!(
            "key `{STATE}`: expected a float32/float64 vector [n] with 1 <= n <= {MAX_STATE}, \
             got {} {:?}",
            st.dtype.numpy(),
            st.shape
        ));
    }
    let state = st.to_f64();
    if let Some(i) = state.iter().position(|v| !v.is_finite()) {
        return Err(format!("key `{STATE}`: entry {i} is not finite"));
    }
    let prompt = match required(PROMPT)? {
        Value::String(s) => s
            .as_str()
            .ok_or_else(|| format!("key `{PROMPT}`: not valid UTF-8"))?
            .to_string(),
        other => {
            return Err(format!(
                "key `{PROMPT}`: expected str, got {}",
                ndarray::kind(other)
            ))
        }
    };
    Ok(Request::Infer {
        images,
        state,
        prompt,
    })
}

fn image(key: &'static str, v: &Value) -> Result<ImageRgb8, String> {
    let a: NdArray = ndarray::decode(key, v)?;
    if a.dtype != DType::U8 || a.shape.len() != 3 || a.shape[2] != 3 {
        return Err(format!(
            "key `{key}`: expected a uint8 image [H, W, 3], got {} {:?}",
            a.dtype.numpy(),
            a.shape
        ));
    }
    let (h, w) = (a.shape[0], a.shape[1]);
    let (Ok(h32), Ok(w32)) = (u32::try_from(h), u32::try_from(w)) else {
        return Err(format!("key `{key}`: image {h}x{w} is too large"));
    };
    ImageRgb8::new(key, w32, h32, a.data).map_err(|e| format!("key `{key}`: {e}"))
}

fn str_key(k: &str) -> Value {
    Value::String(k.into())
}

/// `{"actions": [H, D] float64, "server_timing": {"infer_ms": ms}}`.
pub fn actions_reply(chunk: &[Vec<f32>], dims: usize, infer_ms: f64) -> Value {
    let values: Vec<f64> = chunk
        .iter()
        .flat_map(|r| r.iter().take(dims).map(|&v| v as f64))
        .collect();
    let arr = NdArray::from_f64(vec![chunk.len(), dims], &values);
    Value::Map(vec![
        (str_key("actions"), arr.to_value()),
        (
            str_key("server_timing"),
            Value::Map(vec![(str_key("infer_ms"), Value::F64(infer_ms))]),
        ),
    ])
}

pub fn ack_reply(ctrl: &str) -> Value {
    Value::Map(vec![(str_key("__ack__"), Value::String(ctrl.into()))])
}

pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, v);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(extra: Vec<(Value, Value)>) -> Vec<u8> {
        let img = NdArray {
            dtype: DType::U8,
            shape: vec![2, 2, 3],
            data: vec![7; 12],
        };
        let mut m = vec![
            (str_key(IMAGE), img.to_value()),
            (
                str_key(STATE),
                NdArray::from_f64(vec![8], &[0.5; 8]).to_value(),
            ),
            (str_key(PROMPT), Value::from("pick")),
        ];
        m.extend(extra);
        encode(&Value::Map(m))
    }

    #[test]
    fn parses_libero_and_ctrl() {
        let Request::Infer {
            images,
            state,
            prompt,
        } = parse(&obs(vec![])).unwrap()
        else {
            panic!("not infer")
        };
        assert_eq!((images.len(), state.len(), prompt.as_str()), (1, 8, "pick"));
        let ctrl = encode(&Value::Map(vec![(
            str_key(CTRL),
            Value::from("episode_end"),
        )]));
        assert_eq!(parse(&ctrl).unwrap(), Request::Ctrl("episode_end".into()));
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse(&[0xc1, 0x00]).unwrap_err();
        assert!(e.contains("msgpack"), "{e}");
        let no_state = encode(&Value::Map(vec![(str_key(PROMPT), Value::from("x"))]));
        assert!(parse(&no_state)
            .unwrap_err()
            .contains("`observation/image`"));
        let bad_wrist = obs(vec![(
            str_key(WRIST),
            NdArray::from_f64(vec![2, 2, 3], &[0.0; 12]).to_value(),
        )]);
        let e = parse(&bad_wrist).unwrap_err();
        assert!(
            e.contains("`observation/wrist_image`") && e.contains("<f8"),
            "{e}"
        );
        let bad_prompt = obs(vec![]);
        let mut v = rmpv::decode::read_value(&mut &bad_prompt[..]).unwrap();
        if let Value::Map(m) = &mut v {
            m[2].1 = Value::from(3);
        }
        assert!(parse(&encode(&v)).unwrap_err().contains("`prompt`"));
    }
}
