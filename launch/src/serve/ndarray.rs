//! numpy arrays and maps in openpi's msgpack dialect (REFERENCE §9): an array is a map with the
//! BIN keys `__ndarray__`, `data` (raw C-order bytes), `dtype` (numpy's `dtype.str`) and
//! `shape`. Decoding also accepts str keys; encoding always writes BIN keys, which is what
//! `openpi_client.msgpack_numpy.unpackb` needs to rebuild an array.

use rmpv::Value;

/// The element types the server reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    U8,
    F32,
    F64,
}

impl DType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "|u1" => Some(Self::U8),
            "<f4" => Some(Self::F32),
            "<f8" => Some(Self::F64),
            _ => None,
        }
    }
    pub fn numpy(self) -> &'static str {
        match self {
            Self::U8 => "|u1",
            Self::F32 => "<f4",
            Self::F64 => "<f8",
        }
    }
    pub fn size(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::F32 => 4,
            Self::F64 => 8,
        }
    }
}

/// A decoded array: its dtype, shape and raw little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl NdArray {
    /// Values as f64 (any supported dtype).
    pub fn to_f64(&self) -> Vec<f64> {
        match self.dtype {
            DType::U8 => self.data.iter().map(|&b| b as f64).collect(),
            DType::F32 => self
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            DType::F64 => self
                .data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        }
    }

    /// An f64 array of `shape` from row-major values.
    pub fn from_f64(shape: Vec<usize>, values: &[f64]) -> Self {
        Self {
            dtype: DType::F64,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn to_value(&self) -> Value {
        let key = |k: &str| Value::Binary(k.as_bytes().to_vec());
        Value::Map(vec![
            (key("__ndarray__"), Value::Boolean(true)),
            (key("data"), Value::Binary(self.data.clone())),
            (key("dtype"), Value::String(self.dtype.numpy().into())),
            (
                key("shape"),
                Value::Array(self.shape.iter().map(|&d| Value::from(d as u64)).collect()),
            ),
        ])
    }
}

/// The value under `key` in a msgpack map, where the key is a str or BIN of that text.
pub fn get<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter().find_map(|(k, v)| {
        let matches = match k {
            Value::String(s) => s.as_str() == Some(key),
            Value::Binary(b) => b.as_slice() == key.as_bytes(),
            _ => false,
        };
        matches.then_some(v)
    })
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => s.as_str().map(str::to_string),
        Value::Binary(b) => String::from_utf8(b.clone()).ok(),
        _ => None,
    }
}

/// Decodes the array under `name`; errors name it and say what was expected.
pub fn decode(name: &str, v: &Value) -> Result<NdArray, String> {
    let err = |p: String| format!("key `{name}`: {p}");
    let Value::Map(m) = v else {
        return Err(err(format!("expected a numpy array, got {}", kind(v))));
    };
    if get(m, "__ndarray__").is_none() {
        return Err(err(
            "expected a numpy array (a map with `__ndarray__`)".into()
        ));
    }
    let dtype_s = get(m, "dtype")
        .and_then(text)
        .ok_or_else(|| err("array has no str `dtype`".into()))?;
    let dtype = DType::parse(&dtype_s).ok_or_else(|| {
        err(format!(
            "unsupported dtype `{dtype_s}` (supported: |u1, <f4, <f8)"
        ))
    })?;
    let Some(Value::Array(dims)) = get(m, "shape") else {
        return Err(err("array has no list `shape`".into()));
    };
    let mut shape = Vec::with_capacity(dims.len());
    for d in dims {
        let n = d
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| err(format!("shape entry {d} is not a non-negative integer")))?;
        shape.push(n);
    }
    let data = match get(m, "data") {
        Some(Value::Binary(b)) => b.clone(),
        _ => return Err(err("array has no bytes `data`".into())),
    };
    let expected = shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| err(format!("shape {shape:?} overflows")))?;
    if data.len() != expected {
        return Err(err(format!(
            "shape {shape:?} of {dtype_s} needs {expected} bytes of data, got {}",
            data.len()
        )));
    }
    Ok(NdArray { dtype, shape, data })
}

/// A short name for a msgpack value's type, for error messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Boolean(_) => "bool",
        Value::Integer(_) => "int",
        Value::F32(_) | Value::F64(_) => "float",
        Value::String(_) => "str",
        Value::Binary(_) => "bytes",
        Value::Array(_) => "list",
        Value::Map(_) => "map",
        Value::Ext(..) => "ext",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let a = NdArray::from_f64(vec![2, 2], &[1.0, -2.5, 3.0, 4.0]);
        let back = decode("x", &a.to_value()).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.to_f64(), vec![1.0, -2.5, 3.0, 4.0]);
        let mut v = a.to_value();
        if let Value::Map(m) = &mut v {
            m[2].1 = Value::String("<i8".into());
        }
        let e = decode("observation/state", &v).unwrap_err();
        assert!(
            e.contains("`observation/state`") && e.contains("<i8"),
            "{e}"
        );
        let mut v = a.to_value();
        if let Value::Map(m) = &mut v {
            m[1].1 = Value::Binary(vec![0; 3]);
        }
        assert!(decode("s", &v).unwrap_err().contains("needs 32 bytes"));
        assert!(decode("s", &Value::from(3))
            .unwrap_err()
            .contains("got int"));
    }
}
