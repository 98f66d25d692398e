//! Prompt tokenizers: a BPE model (Hugging Face `tokenizers`) trained here, saved as the
//! checkpoint's `tokenizer.json`, or the byte-level mapping of [`super::prompt`] for checkpoints
//! without one.
//!
//! The BPE is trained on the data set's instructions plus [`CORPUS`], a short text written for
//! this project in which the manner and direction words (slowly, quickly, left, up, ...) occur
//! often enough that each ends up as one token: the steering analysis finds neurons through
//! those tokens (REFERENCE §1). Text is lower-cased and split on whitespace and punctuation
//! before BPE. Ids 0..=3 are `<pad>`, `<eos>`, `<bos>`, `<unk>`; a prompt becomes
//! `[<bos>] + BPE ids`, cut to the prompt limit. The model's image token is the id after the
//! last BPE id, so `vocab_size = tokenizer size + 1`.

use std::path::Path;

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::utils::Lowercase;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::{AddedToken, ModelWrapper, Tokenizer};

use super::prompt;
use crate::{Result, TuneError};

/// Special tokens, in id order.
pub const SPECIALS: [&str; 4] = ["<pad>", "<eos>", "<bos>", "<unk>"];

/// Words the vocabulary must hold whole (checked by the tests and by [`train_bpe`]'s caller
/// through [`PromptTokenizer::single_token`]).
pub const MANNER_WORDS: [&str; 16] = [
    "slowly",
    "quickly",
    "carefully",
    "fast",
    "slow",
    "quick",
    "rapid",
    "speed",
    "gently",
    "left",
    "right",
    "up",
    "down",
    "above",
    "forward",
    "backward",
];

/// The hand-written part of the BPE training text (the instructions are the other part).
pub const CORPUS: &str = "\
The robot arm moves slowly when the task asks for care, and quickly when time matters. \
Move the gripper up, then down, then left, then right. A fast arm is not always a safe arm; \
a slow arm wastes time. Go quickly to the bowl, then slowly lower it onto the plate. \
Lift the mug up and carry it to the left of the basket. Push the drawer forward, pull it \
backward. Carefully place the bowl, gently set the pot down. Rapid motion raises the speed \
of every joint; slow motion lowers it. Approach from above, leave upward. Turn left, turn \
right, move forward, move backward, go up, go down. Quick, quicker, quickly; slow, slower, \
slowly; fast, faster. At full speed the arm is quick; at low speed it is slow and gentle. \
Pick the object up quickly and put it down carefully. Slide the tray to the right slowly. \
Raise the arm up high, lower it down low, swing it left and right, reach forward and back. \
The planner keeps the speed low near people and high in free space. Move fast. Move slow. \
Move quickly. Move slowly. Move carefully. Move gently. Move rapidly. Move up. Move down. \
Move left. Move right. Move forward. Move backward. Move above the table.";

/// How a policy turns its prompt into token ids.
#[derive(Debug, Clone)]
pub enum PromptTokenizer {
    /// The byte-level mapping of [`super::prompt`] with this id limit.
    Bytes { limit: usize },
    /// A BPE model read from or saved as `tokenizer.json`.
    Bpe(Box<Tokenizer>),
}

fn tok_err(what: &str, e: impl std::fmt::Display) -> TuneError {
    TuneError::input("tokenizer", format!("{what}: {e}"))
}

/// Trains a BPE of at most `max_vocab` ids (specials included) on `instructions` + [`CORPUS`].
/// Deterministic for the same inputs. The VLA trainer's tokenizer; [`train_bpe_with`] with no
/// extra texts gives the same vocabulary.
pub fn train_bpe<'a>(
    instructions: impl IntoIterator<Item = &'a str>,
    max_vocab: usize,
) -> Result<PromptTokenizer> {
    train_bpe_with(instructions, std::iter::empty(), max_vocab)
}

/// [`train_bpe`] with `extra_texts` added to the training text after [`CORPUS`], for a caller
/// whose own words must be in the vocabulary (the reward classifier's `yes` and `no`): a word
/// of the training text becomes one token when the vocabulary has room for its merges, which
/// the caller checks with [`PromptTokenizer::single_token`] (repeating a word in
/// `extra_texts` makes its merges come earlier). Instructions are sorted and deduplicated;
/// extra texts are kept as given. Deterministic for the same inputs; with no extra texts it is
/// [`train_bpe`].
pub fn train_bpe_with<'a, 'b>(
    instructions: impl IntoIterator<Item = &'a str>,
    extra_texts: impl IntoIterator<Item = &'b str>,
    max_vocab: usize,
) -> Result<PromptTokenizer> {
    if max_vocab < SPECIALS.len() + 64 {
        return Err(TuneError::input(
            "vocab_size",
            format!("{max_vocab} is too small for a BPE (need >= 68)"),
        ));
    }
    let bpe = BPE::builder()
        .unk_token("<unk>".into())
        .build()
        .map_err(|e| tok_err("building the BPE model", e))?;
    let mut tok = Tokenizer::new(ModelWrapper::BPE(bpe));
    tok.with_normalizer(Some(Lowercase));
    tok.with_pre_tokenizer(Some(Whitespace {}));
    let mut trainer = TrainerWrapper::BpeTrainer(
        BpeTrainerBuilder::new()
            .vocab_size(max_vocab)
            .min_frequency(1)
            .show_progress(false)
            .special_tokens(
                SPECIALS
                    .iter()
                    .map(|s| AddedToken::from(*s, true))
                    .collect(),
            )
            .build(),
    );
    let mut texts: Vec<String> = instructions.into_iter().map(str::to_owned).collect();
    texts.sort();
    texts.dedup();
    texts.extend(CORPUS.split(". ").map(str::to_owned));
    texts.extend(extra_texts.into_iter().map(str::to_owned));
    tok.train(&mut trainer, texts.into_iter())
        .map_err(|e| tok_err("training the BPE", e))?;
    let t = PromptTokenizer::Bpe(Box::new(tok));
    for (i, s) in SPECIALS.iter().enumerate() {
        if t.token_id(s) != Some(i as u32) {
            return Err(tok_err("training the BPE", format!("{s} is not id {i}")));
        }
    }
    Ok(t)
}

impl PromptTokenizer {
    /// `dir/tokenizer.json` when present (a BPE trained here, or any Hugging Face tokenizer),
    /// else the byte-level mapping with `byte_limit`.
    pub fn load(dir: &Path, byte_limit: usize) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Ok(Self::Bytes { limit: byte_limit });
        }
        let t = Tokenizer::from_file(&path).map_err(|e| TuneError::File {
            path: path.clone(),
            problem: format!("not a tokenizer.json: {e}"),
        })?;
        Ok(Self::Bpe(Box::new(t)))
    }

    /// Writes `tokenizer.json` (BPE only; the byte mapping has no file).
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Self::Bpe(t) = self {
            let text = t
                .to_string(true)
                .map_err(|e| tok_err("serialising tokenizer.json", e))?;
            crate::checkpoint::write_atomic(path, text.as_bytes())?;
        }
        Ok(())
    }

    /// Ids the model sees for text: BPE size, or the byte mapping's limit.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Bytes { limit } => *limit,
            Self::Bpe(t) => t.get_vocab_size(true),
        }
    }

    pub fn is_bpe(&self) -> bool {
        matches!(self, Self::Bpe(_))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        match self {
            Self::Bytes { .. } => None,
            Self::Bpe(t) => t.token_to_id(token),
        }
    }

    /// The BPE ids of `word` (no `<bos>`).
    pub fn word_ids(&self, word: &str) -> Result<Vec<u32>> {
        match self {
            Self::Bytes { limit } => {
                Ok(prompt::byte_tokens(word, *limit, usize::MAX)[1..].to_vec())
            }
            Self::Bpe(t) => Ok(t
                .encode(word, false)
                .map_err(|e| tok_err("encoding", e))?
                .get_ids()
                .to_vec()),
        }
    }

    /// Whether `word` is one token of this vocabulary.
    pub fn single_token(&self, word: &str) -> bool {
        self.is_bpe() && self.word_ids(word).is_ok_and(|ids| ids.len() == 1)
    }

    /// `[<bos>] + ids` of `prompt`, at most `max_tokens` ids (>= 1).
    pub fn encode(&self, prompt_text: &str, max_tokens: usize) -> Result<Vec<u32>> {
        match self {
            Self::Bytes { limit } => Ok(prompt::byte_tokens(prompt_text, *limit, max_tokens)),
            Self::Bpe(t) => {
                let enc = t
                    .encode(prompt_text.trim(), false)
                    .map_err(|e| tok_err("encoding the prompt", e))?;
                Ok(std::iter::once(prompt::BOS)
                    .chain(enc.get_ids().iter().copied())
                    .take(max_tokens.max(1))
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSTR: [&str; 3] = [
        "pick up the black bowl next to the plate and place it on the plate slowly",
        "pick up the black bowl on the stove and place it on the plate from the left",
        "open the top drawer of the cabinet quickly",
    ];

    #[test]
    fn bpe_holds_manner_words_whole_and_round_trips() {
        let t = train_bpe(INSTR, 512).unwrap();
        for w in MANNER_WORDS {
            assert!(t.single_token(w), "{w} -> {:?}", t.word_ids(w).unwrap());
        }
        let ids = t.encode("Pick up the bowl SLOWLY", 48).unwrap();
        assert_eq!(ids[0], prompt::BOS);
        assert_eq!(ids.len(), 6, "{ids:?}");
        assert!(ids.iter().all(|&i| (i as usize) < t.vocab_size()));
        let dir = tempfile::tempdir().unwrap();
        t.save(&dir.path().join("tokenizer.json")).unwrap();
        let back = PromptTokenizer::load(dir.path(), 0).unwrap();
        assert_eq!(back.vocab_size(), t.vocab_size());
        assert_eq!(back.encode("Pick up the bowl SLOWLY", 48).unwrap(), ids);
        // Deterministic: the same inputs give the same vocabulary.
        let again = train_bpe(INSTR, 512).unwrap();
        assert_eq!(
            again.encode(INSTR[1], 48).unwrap(),
            t.encode(INSTR[1], 48).unwrap()
        );
        // Truncation keeps <bos>.
        assert_eq!(t.encode(INSTR[0], 3).unwrap().len(), 3);
        // Unknown characters map to <unk>, not to a panic.
        assert!(t.encode("pick ☃", 48).unwrap().contains(&3));
    }

    #[test]
    fn extra_texts_add_whole_words_and_none_changes_nothing() {
        let plain = train_bpe(INSTR, 512).unwrap();
        let none = train_bpe_with(INSTR, [], 512).unwrap();
        let (PromptTokenizer::Bpe(a), PromptTokenizer::Bpe(b)) = (&plain, &none) else {
            panic!("not a BPE");
        };
        assert_eq!(a.to_string(false).unwrap(), b.to_string(false).unwrap());
        assert!(!plain.single_token("yes") || !plain.single_token("no"));
        let t = train_bpe_with(INSTR, ["yes no", "Yes. No."], 512).unwrap();
        for w in ["yes", "no", "Yes", "NO"] {
            assert!(t.single_token(w), "{w} -> {:?}", t.word_ids(w).unwrap());
        }
        for w in MANNER_WORDS {
            assert!(t.single_token(w), "{w}");
        }
    }

    #[test]
    fn a_broken_tokenizer_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
        let e = PromptTokenizer::load(dir.path(), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
        assert!(train_bpe(INSTR, 10).is_err());
    }
}
