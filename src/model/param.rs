//! A trainable tensor: its value, its gradient and whether weight decay applies.
//! Only the prefix and the head have these; the backbone is plain frozen f32.

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// The name it has in fixtures, checkpoints and adapters (e.g. "prefix.embedding").
    pub name: String,
    pub shape: Vec<usize>,
    pub value: Vec<f32>,
    pub grad: Vec<f32>,
    /// AdamW's decoupled weight decay applies to weights, not to biases (as HF's
    /// Trainer and the official P-Tuning v2 code group them).
    pub decay: bool,
}

impl Param {
    pub fn new(name: impl Into<String>, shape: &[usize], value: Vec<f32>, decay: bool) -> Self {
        let n: usize = shape.iter().product();
        assert_eq!(value.len(), n, "parameter value does not match its shape");
        Param {
            name: name.into(),
            shape: shape.to_vec(),
            value,
            grad: vec![0.0; n],
            decay,
        }
    }

    pub fn zero_grad(&mut self) {
        self.grad.fill(0.0);
    }
}
