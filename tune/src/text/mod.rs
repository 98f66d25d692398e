//! Prompt text to token ids: the byte-level mapping ([`prompt`]) and the BPE prompt tokenizer
//! trained here and saved as `tokenizer.json` ([`tokenizer`]), shared by the VLA policies and
//! the reward models.

pub mod prompt;
pub mod tokenizer;
