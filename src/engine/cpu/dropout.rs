//! Counter-based dropout: whether element `i` of a site is kept is a pure
//! function of (seed, stream, i), so the backward pass regenerates the mask
//! instead of storing it, and a seed reproduces a run on any device.

/// One dropout site. `stream` tells sites apart (layer, position in the layer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub p: f32,
    pub seed: u64,
    pub stream: u64,
}

impl Dropout {
    /// Whether element `index` survives (probability 1 - p).
    pub fn keep(&self, index: u64) -> bool {
        todo!()
    }

    /// x[i] = keep(offset + i) ? x[i] / (1 - p) : 0. The same call is the backward.
    pub fn apply(&self, x: &mut [f32], offset: u64) {
        todo!()
    }
}
