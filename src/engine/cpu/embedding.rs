//! Embedding gather: word + position + token type, the input of the LayerNorm
//! that opens the encoder. Frozen and below every prefix, so it has no backward.

use rayon::prelude::*;

/// out[r, :] = word[ids[r]] + position[positions[r]] + token_type[types[r]] for
/// every row r of [B*T]. Tables are row-major [rows, H]; callers validate ids.
pub fn embedding_forward(
    ids: &[u32],
    positions: &[u32],
    types: &[u32],
    word: &[f32],
    position: &[f32],
    token_type: &[f32],
    out: &mut [f32],
) {
    let hidden = out.len() / ids.len();
    out.par_chunks_mut(hidden).enumerate().for_each(|(r, row)| {
        let w = &word[ids[r] as usize * hidden..][..hidden];
        let p = &position[positions[r] as usize * hidden..][..hidden];
        let t = &token_type[types[r] as usize * hidden..][..hidden];
        for (((o, w), p), t) in row.iter_mut().zip(w).zip(p).zip(t) {
            *o = w + p + t;
        }
    });
}
