//! Prompt text to token ids.
//!
//! The byte-level mapping used by checkpoints without a `tokenizer.json` (older ones, and
//! `rudder train vla --tokenizer bytes`; the default is the BPE of [`super::tokenizer`]): the
//! prompt (trimmed, with `\n` appended as pi0's tokenizer input has it) is UTF-8 encoded and
//! byte `b` becomes token `3 + b mod (limit - 3)`, where `limit` is the vocabulary size, or the
//! image token id when that is smaller (so text never collides with the image token), leaving
//! ids 0 (pad), 1 (eos) and 2 (bos) free. The sequence is `[bos] + bytes`, cut to `max_tokens`
//! in total.
//! A checkpoint folder holding a `tokenizer.json` is refused at load time rather than silently
//! tokenised differently from how it was trained.

pub const PAD: u32 = 0;
pub const EOS: u32 = 1;
pub const BOS: u32 = 2;

/// `[BOS] + byte tokens` of `prompt`, at most `max_tokens` ids (>= 1).
pub fn byte_tokens(prompt: &str, limit: usize, max_tokens: usize) -> Vec<u32> {
    let span = limit.saturating_sub(3).max(1) as u32;
    let text = format!("{}\n", prompt.trim());
    std::iter::once(BOS)
        .chain(text.bytes().map(|b| 3 + (b as u32) % span))
        .take(max_tokens.max(1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping() {
        assert_eq!(
            byte_tokens(" ab ", 512, 48),
            vec![2, 3 + 97, 3 + 98, 3 + 10]
        );
        // Small vocabulary: bytes wrap inside [3, vocab).
        assert!(byte_tokens("\u{ff}xyz", 10, 48)
            .iter()
            .skip(1)
            .all(|&t| (3..10).contains(&t)));
        assert_eq!(byte_tokens("long prompt", 512, 3).len(), 3);
    }
}
