//! Concepts (lists of words) and the neurons whose value vectors speak for them.
//!
//! # Concept score
//!
//! For a neuron with top-k tokens `t_1..t_k` and projection scores `s_1..s_k` (see
//! [`crate::projection`]) and a concept whose words stand for the token set `C` (every token
//! whose [normalized](crate::vocab::normalize) string equals a normalized word, or the id `n`
//! for a word `<n>`):
//!
//! ```text
//! score = sum_{j : t_j in C} max(s_j, 0)  /  sum_{j=1..k} max(s_j, 0)
//! ```
//!
//! (0 when the denominator is 0). It is the share of the neuron's positive top-k mass that the
//! concept holds: 1 when every top token is a concept token, 0 when none is. Neurons rank by
//! score, then by the number of concept tokens in the top-k, then by the concept mass itself,
//! then by flat id. A cluster of size `n` is the `n` best neurons with score > 0 over the layer
//! range (fewer when fewer have any concept token in their top-k).
//!
//! # Random controls
//!
//! For every cluster, `random_{name}` has the same number of neurons in each layer as the
//! cluster, drawn uniformly without replacement from that layer's neurons that are in no concept
//! cluster, with a SplitMix64 generator seeded by `seed` (reproducible across versions).

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::Path;

use crate::dict::{DictMeta, Dictionary};
use crate::error::{io_err, Result, SteerError};
use crate::projection::{NeuronTop, Projection};
use crate::vocab::Vocab;

#[derive(Debug, Clone, PartialEq)]
pub struct Concept {
    pub name: String,
    pub words: Vec<String>,
}

impl Concept {
    pub fn new(name: &str, words: &[&str]) -> Self {
        Self {
            name: name.into(),
            words: words.iter().map(|w| w.to_string()).collect(),
        }
    }

    /// Token ids the concept's words stand for in `vocab`.
    pub fn token_ids(&self, vocab: &Vocab) -> HashSet<u32> {
        self.words.iter().flat_map(|w| vocab.lookup(w)).collect()
    }
}

/// The built-in concepts: fast, slow, up, down, left, right.
pub fn default_concepts() -> Vec<Concept> {
    vec![
        Concept::new(
            "fast",
            &[
                "fast", "quick", "quickly", "rapid", "rapidly", "speed", "hurry", "swift",
            ],
        ),
        Concept::new(
            "slow",
            &["slow", "slowly", "careful", "carefully", "gentle", "gently"],
        ),
        Concept::new(
            "up",
            &[
                "up", "upward", "upwards", "raise", "raised", "lift", "high", "higher", "above",
                "top",
            ],
        ),
        Concept::new(
            "down",
            &[
                "down",
                "downward",
                "downwards",
                "lower",
                "lowered",
                "low",
                "below",
                "bottom",
                "drop",
            ],
        ),
        Concept::new("left", &["left", "leftward", "leftwards", "west"]),
        Concept::new("right", &["right", "rightward", "rightwards", "east"]),
    ]
}

/// Reads concepts from TOML: `name = ["word", ...]` at the top level or under `[concepts]`.
/// They replace built-in concepts of the same name and add new ones; `defaults = false` at the
/// top level drops the built-ins.
pub fn load_concepts(path: &Path) -> Result<Vec<Concept>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    parse_concepts(path, &text)
}

pub fn parse_concepts(path: &Path, text: &str) -> Result<Vec<Concept>> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| SteerError::Parse {
            path: path.to_path_buf(),
            format: "TOML",
            msg: e.to_string(),
        })?;
    let field = |f: &str, p: &str| SteerError::Field {
        path: path.to_path_buf(),
        field: f.to_string(),
        problem: p.to_string(),
    };
    let mut keep_defaults = true;
    let mut entries: Vec<(String, &toml::Value)> = Vec::new();
    for (k, v) in &table {
        match (k.as_str(), v) {
            ("defaults", toml::Value::Boolean(b)) => keep_defaults = *b,
            ("defaults", _) => return Err(field("defaults", "expected true or false")),
            ("concepts", toml::Value::Table(t)) => {
                entries.extend(t.iter().map(|(n, v)| (format!("concepts.{n}"), v)))
            }
            _ => entries.push((k.clone(), v)),
        }
    }
    let mut out = if keep_defaults {
        default_concepts()
    } else {
        vec![]
    };
    for (f, v) in entries {
        let name = f.strip_prefix("concepts.").unwrap_or(&f).to_string();
        let a = v
            .as_array()
            .ok_or_else(|| field(&f, "expected a list of words"))?;
        let words = a
            .iter()
            .enumerate()
            .map(|(j, w)| {
                w.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| field(&format!("{f}[{j}]"), "expected a string"))
            })
            .collect::<Result<Vec<_>>>()?;
        if words.is_empty() {
            return Err(field(&f, "a concept needs at least one word"));
        }
        let c = Concept { name, words };
        match out.iter_mut().find(|x| x.name == c.name) {
            Some(x) => *x = c,
            None => out.push(c),
        }
    }
    if out.is_empty() {
        return Err(field("concepts", "no concepts defined"));
    }
    Ok(out)
}

/// The concept score of a neuron (module docs) and the number of concept tokens in its top-k.
pub fn concept_score(n: &NeuronTop, ids: &HashSet<u32>) -> (f32, usize, f32) {
    let mut total = 0f32;
    let mut hit = 0f32;
    let mut hits = 0;
    for t in &n.top {
        let s = t.score.max(0.0);
        total += s;
        if ids.contains(&t.id) {
            hit += s;
            hits += 1;
        }
    }
    let score = if total > 0.0 { hit / total } else { 0.0 };
    (score, hits, hit)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub layer: usize,
    pub neuron: usize,
    pub flat: usize,
    pub score: f32,
    pub hits: usize,
}

/// Neurons of `layers` with a positive concept score, best first.
pub fn rank(p: &Projection, ids: &HashSet<u32>, layers: Range<usize>) -> Vec<Ranked> {
    let mut v: Vec<(Ranked, f32)> = p
        .neurons()
        .filter(|(l, _)| layers.contains(l))
        .filter_map(|(layer, n)| {
            let (score, hits, mass) = concept_score(n, ids);
            (score > 0.0).then_some((
                Ranked {
                    layer,
                    neuron: n.neuron,
                    flat: n.flat,
                    score,
                    hits,
                },
                mass,
            ))
        })
        .collect();
    v.sort_by(|(a, am), (b, bm)| {
        b.score
            .total_cmp(&a.score)
            .then(b.hits.cmp(&a.hits))
            .then(bm.total_cmp(am))
            .then(a.flat.cmp(&b.flat))
    });
    v.into_iter().map(|(r, _)| r).collect()
}

/// What was found for one concept.
#[derive(Debug, Clone)]
pub struct ConceptReport {
    pub concept: String,
    pub cluster: String,
    /// Vocabulary tokens the concept's words matched.
    pub tokens: usize,
    pub wanted: usize,
    pub picked: Vec<Ranked>,
}

/// SplitMix64: a tiny generator whose stream is fixed forever (dictionaries stay reproducible).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by rejection.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
}

/// Picks one cluster per (concept, size) over `layers`, plus seeded random controls.
/// With one size, clusters are named after their concept; with several, `{concept}_{size}`.
pub fn build_dictionary(
    p: &Projection,
    vocab: &Vocab,
    concepts: &[Concept],
    sizes: &[usize],
    layers: Range<usize>,
    seed: u64,
) -> Result<(Dictionary, Vec<ConceptReport>)> {
    if layers.start >= layers.end || layers.end > p.num_layers {
        return Err(SteerError::Invalid(format!(
            "layer range {}..{} is empty or outside the model's {} decoder layers",
            layers.start, layers.end, p.num_layers
        )));
    }
    if sizes.is_empty() || sizes.contains(&0) {
        return Err(SteerError::Invalid(
            "cluster sizes must be at least 1".into(),
        ));
    }
    let mut dict = Dictionary {
        meta: DictMeta {
            model: Some(p.model.clone()),
            d_ff: Some(p.d_ff),
            num_layers: Some(p.num_layers),
            layers: Some((layers.start, layers.end)),
            top_k: Some(p.top_k),
            seed: Some(seed),
        },
        ..Default::default()
    };
    let mut reports = Vec::new();
    for c in concepts {
        let ids = c.token_ids(vocab);
        let ranked = rank(p, &ids, layers.clone());
        for &size in sizes {
            let name = if sizes.len() == 1 {
                c.name.clone()
            } else {
                format!("{}_{size}", c.name)
            };
            let picked: Vec<Ranked> = ranked.iter().take(size).cloned().collect();
            if !picked.is_empty() {
                dict.clusters
                    .insert(name.clone(), picked.iter().map(|r| r.flat).collect());
            }
            reports.push(ConceptReport {
                concept: c.name.clone(),
                cluster: name,
                tokens: ids.len(),
                wanted: size,
                picked,
            });
        }
    }
    // Random controls with the same per-layer counts, avoiding every concept neuron.
    let used: HashSet<usize> = dict.clusters.values().flatten().copied().collect();
    let mut rng = SplitMix64::new(seed);
    let d_ff = p.d_ff;
    let mut controls = BTreeMap::new();
    for (name, ids) in &dict.clusters {
        let mut per_layer: BTreeMap<usize, usize> = BTreeMap::new();
        for &i in ids {
            *per_layer.entry(i / d_ff).or_default() += 1;
        }
        let mut ctl = Vec::new();
        for (layer, count) in per_layer {
            let mut pool: Vec<usize> = (layer * d_ff..(layer + 1) * d_ff)
                .filter(|i| !used.contains(i))
                .collect();
            for j in 0..count.min(pool.len()) {
                let k = j + rng.below((pool.len() - j) as u64) as usize;
                pool.swap(j, k);
                ctl.push(pool[j]);
            }
        }
        controls.insert(format!("random_{name}"), ctl);
    }
    dict.controls = controls;
    Ok((dict, reports))
}
