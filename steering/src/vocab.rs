//! Token strings for ids, read from a model folder's `tokenizer.json` (the `model.vocab` map of
//! BPE / WordPiece / WordLevel tokenizers, the `[piece, score]` list of Unigram ones, and
//! `added_tokens`), without the tokenizers crate. Ids it does not name print as `<id>`.
//!
//! Concept words are matched against tokens after [`normalize`]: lower case, without the
//! word-start markers of SentencePiece (`▁`), byte-level BPE (`Ġ`) and WordPiece (`##`). A word
//! written `<123>` matches token id 123 (useful for models without a tokenizer).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{io_err, Result, SteerError};

#[derive(Debug, Clone)]
pub struct Vocab {
    tokens: Vec<Option<String>>,
    /// normalized token string -> ids.
    index: HashMap<String, Vec<u32>>,
    source: Option<PathBuf>,
}

/// Lower case, without leading `▁`, `Ġ`, `##` markers and surrounding whitespace.
pub fn normalize(s: &str) -> String {
    let mut t = s.trim();
    loop {
        let before = t.len();
        for p in ["▁", "Ġ", "##"] {
            t = t.strip_prefix(p).unwrap_or(t);
        }
        t = t.trim_start();
        if t.len() == before {
            break;
        }
    }
    t.to_lowercase()
}

fn parse_id_word(word: &str) -> Option<u32> {
    word.trim()
        .strip_prefix('<')?
        .strip_suffix('>')?
        .parse()
        .ok()
}

impl Vocab {
    /// No strings: every id prints as `<id>`.
    pub fn ids_only(size: usize) -> Self {
        Self {
            tokens: vec![None; size],
            index: HashMap::new(),
            source: None,
        }
    }

    /// `dir/tokenizer.json` when present, else [`Vocab::ids_only`].
    pub fn for_model_dir(dir: &Path, size: usize) -> Result<Self> {
        let p = dir.join("tokenizer.json");
        if p.exists() {
            Self::from_tokenizer_json(&p, size)
        } else {
            Ok(Self::ids_only(size))
        }
    }

    /// Reads a Hugging Face `tokenizer.json`; ids at or beyond `size` are ignored.
    pub fn from_tokenizer_json(path: &Path, size: usize) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| SteerError::Parse {
            path: path.to_path_buf(),
            format: "JSON",
            msg: e.to_string(),
        })?;
        let field = |f: &str, p: &str| SteerError::Field {
            path: path.to_path_buf(),
            field: f.to_string(),
            problem: p.to_string(),
        };
        let mut tokens: Vec<Option<String>> = vec![None; size];
        let mut put = |id: u64, s: &str| {
            if let Some(slot) = tokens.get_mut(id as usize) {
                *slot = Some(s.to_string());
            }
        };
        match v.pointer("/model/vocab") {
            Some(serde_json::Value::Object(m)) => {
                for (tok, id) in m {
                    let id = id
                        .as_u64()
                        .ok_or_else(|| field("model.vocab", "expected token -> integer id"))?;
                    put(id, tok);
                }
            }
            Some(serde_json::Value::Array(a)) => {
                for (id, e) in a.iter().enumerate() {
                    let tok = e
                        .get(0)
                        .and_then(|t| t.as_str())
                        .ok_or_else(|| field("model.vocab", "expected [piece, score] pairs"))?;
                    put(id as u64, tok);
                }
            }
            _ => {
                return Err(field(
                    "model.vocab",
                    "missing (expected a token -> id map or a [piece, score] list)",
                ))
            }
        }
        if let Some(added) = v.get("added_tokens").and_then(|a| a.as_array()) {
            for e in added {
                if let (Some(id), Some(s)) = (
                    e.get("id").and_then(|x| x.as_u64()),
                    e.get("content").and_then(|x| x.as_str()),
                ) {
                    put(id, s);
                }
            }
        }
        let mut index: HashMap<String, Vec<u32>> = HashMap::new();
        for (id, t) in tokens.iter().enumerate() {
            if let Some(t) = t {
                index.entry(normalize(t)).or_default().push(id as u32);
            }
        }
        Ok(Self {
            tokens,
            index,
            source: Some(path.to_path_buf()),
        })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The tokenizer file the strings came from (None: ids only).
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// The token's string, or `<id>`.
    pub fn token(&self, id: u32) -> String {
        match self.tokens.get(id as usize) {
            Some(Some(s)) => s.clone(),
            _ => format!("<{id}>"),
        }
    }

    /// Ids of the tokens a word stands for: `<id>`, or every token whose normalized string
    /// equals the normalized word.
    pub fn lookup(&self, word: &str) -> Vec<u32> {
        let mut out = Vec::new();
        if let Some(id) = parse_id_word(word) {
            if (id as usize) < self.tokens.len() {
                out.push(id);
            }
        }
        if let Some(ids) = self.index.get(&normalize(word)) {
            for &i in ids {
                if !out.contains(&i) {
                    out.push(i);
                }
            }
        }
        out
    }

    /// Whether a token id stands for `word` (same rule as [`Vocab::lookup`]).
    pub fn matches(&self, id: u32, word: &str) -> bool {
        if parse_id_word(word) == Some(id) {
            return true;
        }
        match self.tokens.get(id as usize) {
            Some(Some(s)) => normalize(s) == normalize(word),
            _ => false,
        }
    }
}
