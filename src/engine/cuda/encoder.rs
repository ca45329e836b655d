//! The frozen encoder on a GPU: `model::encoder`'s forward and backward, step
//! for step, with device buffers.
//!
//! Per layer (rows = B·T; see model/encoder.rs for the same picture):
//!
//! ```text
//! x ─ qkv = x·Wqkvᵀ (cuBLAS) ─ ops = attention_operands(qkv + bqkv, prefix kv)
//!   ─ attention_forward(ops) → ctx, lse
//!   ln1_in = dropout(ctx·Woᵀ + bo) + x ; x1 = LN1(ln1_in)     (one fused kernel)
//!   inter_pre = x1·W1ᵀ + b1 ; inter = gelu(inter_pre)          (GEMM, fused bias+GELU)
//!   ln2_in = dropout(inter·W2ᵀ + b2) + x1 ; x = LN2(ln2_in)    (GEMM, fused kernel)
//! ```
//!
//! attention_operands writes what the attention kernels read, once per
//! layer: per (batch row, head) the queries (bias added, times the softmax
//! scale), the keys and the values (the prefix's first) as contiguous rows
//! [B, NH, T + 2N, HD] in the format of the attention's products (bf16,
//! tf32 or f32), so that each kernel copies its tiles (it converted and
//! biased every element as it read, a third of the forward's instructions).
//! A layer whose operands no backward reads (inference, and training's
//! layers below the lowest prefixed one) skips that pass in bf16 on the
//! tensor cores: attention_forward_qkv_bf16 reads q, k and v from the QKV
//! GEMM's bf16 output and adds q's bias as it loads q's tile;
//! attention_operands writes the prefix's rows alone, less k's and v's
//! biases, so that the token keys need none (a shift of every score of a
//! row; kernels/attention_mma.cuh, QkvSource and SHIFTED). It wrote and read
//! back 2 × 25 MB a layer for bert-large at batch 32 × 128, 0.7 ms of a
//! 7.8 ms inference (run 4).
//! Training saves per layer, from the lowest prefixed one up: those
//! operands, ctx and the log-sum-exp
//! of each softmax row (instead of the T×N probabilities the CPU keeps: the
//! flash-style backward recomputes them), ln1_in and its stats, inter_pre,
//! ln2_in and its stats.
//!
//! In bf16 the GEMMs read bf16 and write bf16 ([`GemmOut`]): each GEMM's
//! output is read once, by the kernel after it, which adds the bias in f32;
//! inter_pre is saved as the GEMM wrote it (half the bytes),
//! and training's residual stream and LayerNorm inputs stay f32; inference
//! keeps the stream in bf16 alone, as PyTorch keeps a bf16 model's
//! ([`Stream`]: half the bytes of each residual LayerNorm). In fp32 on a
//! card with tensor cores, the weights are uploaded as tf32 pairs and each
//! GEMM runs as three tf32 GEMMs (engine/cuda/tf32x3.rs); attention splits
//! its operands in the same way as it reads them.
//!
//! Prompt tuning ([`Prompt::method`]): no layer has prefix keys; the layers
//! run on the [B, P+T] layer batch whose first P rows of each sequence
//! `embed_layernorm` takes from the prompt (kv [B, P, H]), and training keeps
//! that LayerNorm's input and stats, saves every layer and runs the backward
//! on through the embeddings' dropout and LayerNorm to the prompt's rows
//! (gathered into d_kv for reduce_prefix). A per-token head reads the
//! tokens' rows, gathered past the prompt's.
//!
//! Where tensors are born and die: weights are uploaded once in
//! [`CudaEncoder::new`]; the batch (ids, positions, types, mask) goes up at
//! each forward, and in inference the prefix table (P × Ls·2H) when it
//! changed; a training run's prompt lives here ([`PromptSource::Resident`],
//! engine/cuda/optim.rs) with its gradients. The last hidden state stays
//! here for the task head ([`CudaEncoder::head_forward`],
//! engine/cuda/head.rs), whose backward leaves its gradient here for
//! [`CudaEncoder::backward`]; only targets, loss terms, logits and the
//! classifier's gradients cross. [`CudaEncoder::forward`] brings the hidden
//! state down instead (the tests read it against the fixtures).

use std::sync::Arc;

use crate::engine::cpu::dropout::Dropout;
use crate::engine::cuda::device::{
    dropout_site, CudaDevice, GemmOut, KernelArg, Operand, Precision,
};
use crate::engine::cuda::head::CudaHead;
use crate::engine::cuda::kernels::{operands_per_thread, Kernel, MmaFormat, ROW_BLOCK};
use crate::engine::cuda::memory::DevBuf;
use crate::engine::cuda::optim::ResidentPrefix;
use crate::engine::cuda::table_cache::TableCache;
use crate::engine::cuda::tf32x3::{Fp32Gemm, SplitWeight};
use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::bert::{BertModel, LayerNorm, Linear};
use crate::model::config::BertConfig;
use crate::model::encoder::DropoutConfig;
use crate::model::heads::ClassificationHead;
use crate::model::prefix::PromptMethod;

/// Row elements per thread of the LayerNorm kernels (LN_PER_THREAD in
/// kernels/layernorm.cuh).
const LN_PER_THREAD: usize = 32;

/// Threads per block of the LayerNorm kernels where a warp holds a row: 4
/// rows a block. A thread holds its row's 32 values and their neighbours
/// (96-152 registers, ptxas sm_90), so blocks of ROW_BLOCK threads left 1-2
/// blocks, 8-16 warps, on a multiprocessor (Nsight Compute on the H200:
/// 22 % occupancy, 35 % of the memory bandwidth); smaller blocks fill the
/// registers in finer steps.
const LN_ROW_WARPS_BLOCK: u32 = 128;

/// The launch of a LayerNorm kernel over [rows, h], (grid, block), as
/// `ln_row` in kernels/layernorm.cuh maps rows: a warp per row where one
/// holds it (4 rows per block), else a block of ROW_BLOCK threads per row.
fn layernorm_launch(rows: usize, h: usize) -> ((u32, u32, u32), u32) {
    if h <= 32 * LN_PER_THREAD {
        let per_block = LN_ROW_WARPS_BLOCK as usize / 32;
        ((rows.div_ceil(per_block) as u32, 1, 1), LN_ROW_WARPS_BLOCK)
    } else {
        ((rows as u32, 1, 1), ROW_BLOCK)
    }
}

/// Queries (or keys) per block of the attention kernels (TILE in
/// kernels/attention.cuh), each block 64 threads.
const ATTENTION_TILE: usize = 32;

/// Queries (or keys) per block of the tensor-core attention kernels
/// (MMA_ROWS in kernels/attention_mma.cuh), each block 128 threads.
const MMA_TILE: usize = 64;

/// A weight matrix as the precision's GEMMs read it.
enum Weight {
    F32(DevBuf<f32>),
    Bf16(DevBuf<u16>),
    /// fp32 by 3xTF32 (engine/cuda/tf32x3.rs): its two tf32 parts.
    Split(SplitWeight),
}

/// A frozen nn.Linear on the device: W [out, inp] in the GEMMs' precision,
/// and its bias [out].
struct DevLinear {
    weight: Weight,
    bias: DevBuf<f32>,
    out: usize,
    inp: usize,
    precision: Precision,
}

impl DevLinear {
    /// W as the GEMMs take it.
    fn operand(&self) -> Operand {
        match &self.weight {
            Weight::F32(DevBuf { ptr, .. }) | Weight::Bf16(DevBuf { ptr, .. }) => {
                Operand::Plain(*ptr)
            }
            Weight::Split(w) => w.operand(),
        }
    }

    /// y[rows, out] = x·Wᵀ (the kernel after the GEMM adds the bias).
    fn forward(&self, dev: &CudaDevice, x: u64, rows: usize, y: GemmOut) -> Result<()> {
        let (w, p) = (self.operand(), self.precision);
        dev.linear(p, x, w, rows, self.out, self.inp, y, false)
    }

    /// dx[rows, inp] (+)= dy·W, the activation gradient only (W is frozen).
    fn backward_input(
        &self,
        dev: &CudaDevice,
        dy: u64,
        rows: usize,
        (dx, accumulate): (GemmOut, bool),
    ) -> Result<()> {
        let (w, p) = (self.operand(), self.precision);
        dev.linear_backward_input(p, dy, w, rows, self.out, self.inp, dx, accumulate)
    }
}

struct DevLayerNorm {
    weight: DevBuf<f32>,
    bias: DevBuf<f32>,
    eps: f32,
}

struct DevLayer {
    qkv: DevLinear,
    attn_out: DevLinear,
    ln1: DevLayerNorm,
    intermediate: DevLinear,
    output: DevLinear,
    ln2: DevLayerNorm,
}

/// What one trained layer's backward reads. In bf16 the GEMM's output
/// inter_pre is kept as the GEMM wrote it, in bf16 and without its bias
/// (inter16), and the f32 buffer is not used.
#[derive(Default)]
struct Saved {
    /// [B, NH, T + 2N, HD]: attention_operands' output, f32 (tf32-rounded
    /// for the tf32 tensor cores) or bf16 (ops16) for the bf16 ones.
    ops: DevBuf<f32>,
    ops16: DevBuf<u16>,
    /// [rows, H]: attention output before Wo (the backward's D = dO·O).
    ctx: DevBuf<f32>,
    /// [B, NH, T]
    lse: DevBuf<f32>,
    /// [rows, H] and [rows, 2]
    ln1_in: DevBuf<f32>,
    ln1_stats: DevBuf<f32>,
    /// [rows, I]: with its bias in f32, without in bf16.
    inter_pre: DevBuf<f32>,
    inter16: DevBuf<u16>,
    ln2_in: DevBuf<f32>,
    ln2_stats: DevBuf<f32>,
}

impl Saved {
    /// The buffers of one layer's forward: those it saves when `keep`
    /// (which in bf16 and inference leave the f32 copies of ctx and of the
    /// LayerNorm inputs unwritten), in `bf16` or f32, with `ops` attention
    /// operands, in bf16 when `ops_bf16`.
    fn ensure(
        &mut self,
        dev: &CudaDevice,
        (rows, h, inter, lse, ops): (usize, usize, usize, usize, usize),
        (bf16, ops_bf16): (bool, bool),
        keep: bool,
    ) -> Result<()> {
        if bf16 {
            self.inter16.ensure(dev, rows * inter)?;
        } else {
            self.inter_pre.ensure(dev, rows * inter)?;
        }
        if ops_bf16 {
            self.ops16.ensure(dev, ops)?;
        } else {
            self.ops.ensure(dev, ops)?;
        }
        if keep || !bf16 {
            self.ctx.ensure(dev, rows * h)?;
            self.ln1_in.ensure(dev, rows * h)?;
            self.ln2_in.ensure(dev, rows * h)?;
        }
        self.lse.ensure(dev, lse)?;
        self.ln1_stats.ensure(dev, rows * 2)?;
        self.ln2_stats.ensure(dev, rows * 2)
    }
}

/// The prompt of a forward pass: P-Tuning v2's keys and values at
/// `layers`, or prompt tuning's P input embeddings (`layers` empty), whose
/// rows the layers see in front of each sequence's tokens.
#[derive(Clone, Copy, Debug)]
pub struct Prompt<'a> {
    pub method: PromptMethod,
    pub len: usize,
    /// Prefixed layers, ascending.
    pub layers: &'a [usize],
    pub source: PromptSource<'a>,
}

/// (blocks, block): a row of the prompt table of `method` holds `blocks`
/// blocks of `block` values, a prefixed layer's keys and values (2H) or
/// prompt tuning's one input embedding (H).
fn table_blocks(method: PromptMethod, layers: &[usize], h: usize) -> (usize, usize) {
    let blocks = match method {
        PromptMethod::PTuningV2 => layers.len(),
        PromptMethod::PromptTuning => 1,
    };
    (blocks, method.block(h))
}

/// The lowest layer a training step saves and the backward reaches: the
/// lowest prefixed one, or under prompt tuning layer 0 (the backward goes
/// on to the embeddings); `num_layers` without a prompt.
fn lowest_trained(method: PromptMethod, layers: &[usize], num_layers: usize) -> usize {
    match method {
        PromptMethod::PTuningV2 => layers.first().copied().unwrap_or(num_layers),
        PromptMethod::PromptTuning => 0,
    }
}

#[derive(Clone, Copy, Debug)]
pub enum PromptSource<'a> {
    /// The prefix encoder's output [P, Ls·2H] (prompt tuning: [P, H]),
    /// shared by every row (inference). Sent when it is not the table
    /// (this very `Arc`) that the last call sent.
    Shared(&'a Arc<[f32]>),
    /// Rows of different adapters (serving): their prefix tables, each
    /// [P, Ls·2H], and the table of each of the B rows. The device keeps
    /// the tables it was sent ([`TableCache`]) and expands them per row.
    PerRow {
        tables: &'a [Arc<[f32]>],
        row_table: &'a [u32],
    },
    /// The training run's prompt on the device ([`CudaEncoder::resident`]),
    /// shared by every row with the prefix dropout applied per row; the
    /// backward leaves its gradients there.
    Resident,
}

/// Device buffers reused from call to call (grown, never shrunk).
#[derive(Default)]
struct Workspace {
    ids: DevBuf<u32>,
    positions: DevBuf<u32>,
    types: DevBuf<u32>,
    mask: DevBuf<f32>,
    /// [rows, H]: the running hidden state.
    x: DevBuf<f32>,
    /// Prompt tuning's training: the embeddings' LayerNorm input [rows, H]
    /// and (mean, rstd) [rows, 2], which the backward reaches.
    embed_in: DevBuf<f32>,
    embed_stats: DevBuf<f32>,
    /// Prompt tuning: a per-token head's input [B·T, H] (the tokens' rows,
    /// without the prompt's) and its gradient.
    tokens: DevBuf<f32>,
    d_tokens: DevBuf<f32>,
    /// [rows, H]: the backward's scratch.
    tmp: DevBuf<f32>,
    x1: DevBuf<f32>,
    /// [rows, H] ×2: bf16 inference's residual stream (x and x1; Stream).
    x16: DevBuf<u16>,
    x1_16: DevBuf<u16>,
    /// [rows, I]
    act: DevBuf<f32>,
    /// [rows, 3H]: the QKV GEMM's output (f32, or bf16 in qkv16), which
    /// attention_operands reads.
    qkv: DevBuf<f32>,
    qkv16: DevBuf<u16>,
    /// Layer buffers for layers that save nothing.
    scratch: Saved,
    /// [rows, H]: in bf16, the attention-output and FFN-output GEMMs'
    /// output, which the residual LayerNorm after each reads.
    out16: DevBuf<u16>,
    saved: Vec<Saved>,
    /// [P, Ls·2H] and [Ls, B, P, 2H] (prompt tuning: [P, H] and [B, P, H])
    past: DevBuf<f32>,
    /// The table `past` holds: the same `Arc` again is not sent again (an
    /// evaluation reuses one table batch after batch). Holding it keeps its
    /// allocation, so no other table can come at its address.
    past_sent: Option<Arc<[f32]>>,
    /// Serving: the adapters' tables on the device, the device address of
    /// each table of a pass [U], and each row's table [B].
    tables: TableCache,
    table_ptrs: DevBuf<u64>,
    row_table: DevBuf<u32>,
    kv: DevBuf<f32>,
    d_kv: DevBuf<f32>,
    /// Backward: [rows, H] ×3 (in bf16: d_ctx16), [rows, I] (in bf16:
    /// d_inter16), [rows, 3H], [B, NH, T]
    d_h: DevBuf<f32>,
    d_x: DevBuf<f32>,
    d_ctx: DevBuf<f32>,
    d_ctx16: DevBuf<u16>,
    d_inter: DevBuf<f32>,
    d_inter16: DevBuf<u16>,
    d_qkv: DevBuf<f32>,
    delta: DevBuf<f32>,
    /// [B, NH, T, HD]: dO where the attention's backward reads it (f32, or
    /// bf16 in d_out16: the attention operands' format).
    d_out: DevBuf<f32>,
    d_out16: DevBuf<u16>,
    /// bf16 copies of GEMM inputs.
    bf16: DevBuf<u16>,
}

/// What the backward needs to know about the last training forward.
struct Step {
    batch: usize,
    /// Rows per sequence the layers saw: T, or P + T under prompt tuning.
    seq: usize,
    prefix: usize,
    method: PromptMethod,
    layers: Vec<usize>,
    dropout: DropoutConfig,
    prefix_dropout: Option<Dropout>,
    /// The head's backward has written the output's gradient into d_x.
    d_out_ready: bool,
}

/// The encoder's weights on one GPU and the buffers of its passes.
pub struct CudaEncoder {
    pub dev: CudaDevice,
    pub config: BertConfig,
    pub precision: Precision,
    word: DevBuf<f32>,
    position: DevBuf<f32>,
    token_type: DevBuf<f32>,
    embed_ln: DevLayerNorm,
    layers: Vec<DevLayer>,
    ws: Workspace,
    /// (B, rows per sequence, prompt rows in front of the tokens) of the
    /// last forward, whose output the head reads.
    last: Option<(usize, usize, usize)>,
    /// The head reads `tokens` (a per-token head under prompt tuning).
    head_on_tokens: bool,
    step: Option<Step>,
    head: CudaHead,
    /// A training run's prefix table with its gradient and moments, when
    /// the model keeps it here (PromptModel on a GPU, plain tables).
    pub resident: Option<ResidentPrefix>,
}

impl CudaEncoder {
    /// Opens GPU `ordinal` and uploads `model`'s weights (matrices in bf16
    /// when `precision` is bf16, as tf32 pairs when fp32 runs by 3xTF32).
    pub fn new(model: &BertModel, ordinal: usize, precision: Precision) -> Result<Self> {
        Self::on(
            CudaDevice::open(ordinal, model.config.head_dim())?,
            model,
            precision,
        )
    }

    /// How the encoder's GEMMs run: "3xTF32" or "SGEMM" in fp32 (as the
    /// device chose), "TF32", "BF16".
    pub fn gemm_math(&self) -> &'static str {
        match self.precision {
            Precision::Fp32 => self.dev.fp32_gemm.as_str(),
            Precision::Tf32 => "TF32",
            Precision::Bf16 => "BF16",
        }
    }

    /// [`CudaEncoder::new`] on a device already open (e.g.
    /// [`CudaDevice::emulated`]), whose kernels must be built for the
    /// model's head dimension.
    pub fn on(dev: CudaDevice, model: &BertModel, precision: Precision) -> Result<Self> {
        let config = model.config.clone();
        if dev.head_dim != config.head_dim() {
            return Err(Error::Cuda(format!(
                "the kernels were built for head dimension {}, the model's is {}",
                dev.head_dim,
                config.head_dim()
            )));
        }
        // The LayerNorm kernels hold a row in registers (LN_PER_THREAD in
        // kernels/layernorm.cuh) across a block.
        let max_row = LN_PER_THREAD * ROW_BLOCK as usize;
        if config.hidden_size > max_row {
            return Err(Error::Cuda(format!(
                "the LayerNorm kernels take rows of at most {max_row} values, this model's hidden size is {}; use --device cpu",
                config.hidden_size
            )));
        }
        let up = |v: &[f32]| -> Result<DevBuf<f32>> {
            let mut b = DevBuf::default();
            b.upload(&dev, v)?;
            Ok(b)
        };
        let linear = |l: &Linear| -> Result<DevLinear> {
            let weight = match precision {
                Precision::Bf16 => {
                    let bits: Vec<u16> = l
                        .weight
                        .iter()
                        .map(|&x| half::bf16::from_f32(x).to_bits())
                        .collect();
                    let mut b = DevBuf::default();
                    b.upload(&dev, &bits)?;
                    Weight::Bf16(b)
                }
                Precision::Fp32 if dev.fp32_gemm == Fp32Gemm::Tf32x3 => {
                    Weight::Split(SplitWeight::upload(&dev, &l.weight)?)
                }
                _ => Weight::F32(up(&l.weight)?),
            };
            Ok(DevLinear {
                weight,
                bias: up(&l.bias)?,
                out: l.out_features,
                inp: l.in_features,
                precision,
            })
        };
        let ln = |l: &LayerNorm| -> Result<DevLayerNorm> {
            Ok(DevLayerNorm {
                weight: up(&l.weight)?,
                bias: up(&l.bias)?,
                eps: l.eps,
            })
        };
        let e = &model.embeddings;
        let layers = model
            .layers
            .iter()
            .map(|l| {
                Ok(DevLayer {
                    qkv: linear(&l.attention.self_attention.qkv)?,
                    attn_out: linear(&l.attention.output.dense)?,
                    ln1: ln(&l.attention.output.layer_norm)?,
                    intermediate: linear(&l.intermediate.dense)?,
                    output: linear(&l.output.dense)?,
                    ln2: ln(&l.output.layer_norm)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let enc = CudaEncoder {
            head: CudaHead::new(&dev, model.pooler.as_ref())?,
            last: None,
            head_on_tokens: false,
            word: up(&e.word_embeddings)?,
            position: up(&e.position_embeddings)?,
            token_type: up(&e.token_type_embeddings)?,
            embed_ln: ln(&e.layer_norm)?,
            layers,
            ws: Workspace::default(),
            step: None,
            resident: None,
            dev,
            config,
            precision,
        };
        enc.dev.sync()?;
        Ok(enc)
    }

    /// Inference: the last hidden state [B·T, H] (prompt tuning: [B·(P+T),
    /// H], the prompt's rows first), brought to the host. No dropout,
    /// nothing saved.
    pub fn forward(&mut self, batch: &Batch, prompt: Option<Prompt<'_>>) -> Result<Vec<f32>> {
        self.encode(batch, prompt)?;
        let rows = batch.batch * (batch.seq + prompt.map_or(0, |p| p.method.rows_in_front(p.len)));
        self.ws
            .x
            .download(&self.dev, rows * self.config.hidden_size)
    }

    /// Inference whose output stays on the device for
    /// [`CudaEncoder::head_forward`].
    pub fn encode(&mut self, batch: &Batch, prompt: Option<Prompt<'_>>) -> Result<()> {
        self.run_forward(batch, prompt, &DropoutConfig::OFF, None, false)
    }

    /// Training forward: like [`CudaEncoder::encode`] with dropout, saving
    /// what [`CudaEncoder::backward`] reads from the lowest prefixed layer up.
    /// `prompt` must be [`PromptSource::Resident`]: the backward leaves the
    /// prompt's gradients with it. `prefix_dropout` is the prefix encoder's
    /// output dropout (per row, as PrefixEncoder::expand).
    pub fn forward_train(
        &mut self,
        batch: &Batch,
        prompt: Prompt<'_>,
        dropout: &DropoutConfig,
        prefix_dropout: Option<Dropout>,
    ) -> Result<()> {
        if !matches!(prompt.source, PromptSource::Resident) {
            return Err(Error::InvalidArgument(
                "CUDA training reads its prompt from the device (ResidentPrefix)".into(),
            ));
        }
        self.run_forward(batch, Some(prompt), dropout, prefix_dropout, true)?;
        self.step = Some(Step {
            batch: batch.batch,
            seq: batch.seq + prompt.method.rows_in_front(prompt.len),
            prefix: prompt.len,
            method: prompt.method,
            layers: prompt.layers.to_vec(),
            dropout: *dropout,
            prefix_dropout,
            d_out_ready: false,
        });
        Ok(())
    }

    /// `head` on the last forward's output, with `dropout` on the
    /// classifier's input when training: its logits [R, C] (R = B pooled,
    /// B·T per token) stay on the device for [`CudaEncoder::head`]'s losses.
    pub fn head_forward(
        &mut self,
        head: &ClassificationHead,
        dropout: Option<Dropout>,
    ) -> Result<()> {
        let (b, s, skip) = self.last.ok_or_else(|| {
            Error::InvalidArgument("CUDA head forward without an encoder forward".into())
        })?;
        let h = self.config.hidden_size;
        // Pooled heads read row 0 of each sequence ([CLS], or prompt
        // tuning's first virtual token, as PEFT pools); per-token heads the
        // tokens' rows, gathered after the prompt's.
        self.head_on_tokens = head.per_token && skip > 0;
        if !self.head_on_tokens {
            return self
                .head
                .forward(&self.dev, head, self.ws.x.ptr, (b, s, h), dropout);
        }
        let t = s - skip;
        self.ws.tokens.ensure(&self.dev, b * t * h)?;
        let from = self.ws.x.ptr + (skip * h * std::mem::size_of::<f32>()) as u64;
        gather_sequences(&self.dev, from, self.ws.tokens.ptr, (b, t * h, s * h))?;
        self.head
            .forward(&self.dev, head, self.ws.tokens.ptr, (b, t, h), dropout)
    }

    /// The device and the head, for the logits and the losses.
    pub fn head(&mut self) -> (&CudaDevice, &mut CudaHead) {
        (&self.dev, &mut self.head)
    }

    /// The head's backward after a training forward and a loss: the
    /// output's gradient stays here for [`CudaEncoder::backward`]; returns
    /// the classifier's gradients, weight [C, H] and bias [C].
    pub fn head_backward(&mut self) -> Result<(Vec<f32>, Vec<f32>)> {
        let step = self.step.as_mut().ok_or_else(|| {
            Error::InvalidArgument("CUDA head backward without a training forward".into())
        })?;
        let h = self.config.hidden_size;
        if !self.head_on_tokens {
            let grads = self.head.backward(&self.dev, &mut self.ws.d_x, h)?;
            step.d_out_ready = true;
            return Ok(grads);
        }
        // The tokens' gradient back into their rows, the prompt's zero.
        let grads = self.head.backward(&self.dev, &mut self.ws.d_tokens, h)?;
        let (b, s, skip) = (step.batch, step.seq, step.method.rows_in_front(step.prefix));
        let t = s - skip;
        self.ws.d_x.ensure(&self.dev, b * s * h)?;
        self.ws.d_x.zero(&self.dev)?;
        let to = self.ws.d_x.ptr + (skip * h * std::mem::size_of::<f32>()) as u64;
        self.dev.launch_1d(
            Kernel::ScatterRows,
            b * t * h,
            &[
                &self.ws.d_tokens.ptr,
                &to,
                &(b as i32),
                &((t * h) as i32),
                &((s * h) as u64),
            ],
        )?;
        step.d_out_ready = true;
        Ok(grads)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_forward(
        &mut self,
        batch: &Batch,
        prompt: Option<Prompt<'_>>,
        dropout: &DropoutConfig,
        prefix_dropout: Option<Dropout>,
        train: bool,
    ) -> Result<()> {
        self.last = None;
        let c = &self.config;
        let p = prompt.map_or(0, |p| p.len);
        batch.validate(c, p)?;
        // Prompt tuning: the layers see P rows in front of each sequence
        // (as model::encoder's layer_batch), numbered in order.
        let method = prompt.map_or(PromptMethod::PTuningV2, |p| p.method);
        let skip = method.rows_in_front(p);
        let positions = batch.layer_position_ids(c, method, p);
        let batch = batch.with_prompt_rows(skip, c.pad_token_id as u32);
        let batch = batch.as_ref();
        let (h, inter, nh, hd) = (
            c.hidden_size,
            c.intermediate_size,
            c.num_attention_heads,
            c.head_dim(),
        );
        let (b, t) = (batch.batch, batch.seq);
        let rows = batch.rows();
        let layers: Vec<usize> = prompt.map_or_else(Vec::new, |p| p.layers.to_vec());
        if let Some(&l) = layers.iter().find(|&&l| l >= self.layers.len()) {
            return Err(Error::InvalidArgument(format!(
                "prefix layer {l} does not exist in a backbone of {} layers",
                self.layers.len()
            )));
        }
        let lowest = lowest_trained(method, &layers, self.layers.len());
        let dev = &self.dev;
        let ws = &mut self.ws;

        // The batch.
        ws.ids.upload(dev, &batch.input_ids)?;
        ws.positions.upload(dev, &positions)?;
        ws.types.upload(dev, &batch.token_type_ids)?;
        ws.mask.upload(dev, &batch.attention_mask)?;

        // The prompt: [Ls, B, P, 2H] on the device, expanded there from the
        // prefix tables ([U, P, Ls·2H]; U = 1 but in serving); prompt
        // tuning's [B, P, H] from [U, P, H]. One table for every row with
        // nothing dropped from it (inference) is read as it is.
        let mut prefix_rows = PrefixRows::default();
        if let Some(pr) = prompt {
            let (ls, block) = table_blocks(pr.method, pr.layers, h);
            let table_len = p * ls * block;
            let wrong_table = |len: usize| {
                Error::InvalidArgument(format!(
                    "prompt table has {len} values, expected P·{} = {table_len}",
                    ls * block
                ))
            };
            let (past, table_ptrs, row_table) = match pr.source {
                PromptSource::Shared(past) => {
                    if past.len() != table_len {
                        return Err(wrong_table(past.len()));
                    }
                    if !ws.past_sent.as_ref().is_some_and(|s| Arc::ptr_eq(s, past)) {
                        ws.past_sent = None;
                        ws.past.upload(dev, past)?;
                        ws.past_sent = Some(Arc::clone(past));
                    }
                    (ws.past.ptr, 0u64, 0u64)
                }
                PromptSource::Resident => match self.resident.as_mut() {
                    Some(r) if r.len == table_len => (r.table(dev)?, 0u64, 0u64),
                    _ => {
                        return Err(Error::InvalidArgument(format!(
                            "no prompt table of {table_len} values on the device"
                        )))
                    }
                },
                PromptSource::PerRow { tables, row_table } => {
                    if let Some(t) = tables.iter().find(|t| t.len() != table_len) {
                        return Err(wrong_table(t.len()));
                    }
                    if row_table.len() != b || row_table.iter().any(|&t| t as usize >= tables.len())
                    {
                        return Err(Error::InvalidArgument(format!(
                            "{} rows name tables {row_table:?} of {} for a batch of {b}",
                            row_table.len(),
                            tables.len()
                        )));
                    }
                    let ptrs = ws.tables.addresses(dev, tables)?;
                    ws.table_ptrs.upload(dev, &ptrs)?;
                    ws.row_table.upload(dev, row_table)?;
                    (0u64, ws.table_ptrs.ptr, ws.row_table.ptr)
                }
            };
            let shared = matches!(pr.source, PromptSource::Shared(_))
                && prefix_dropout.is_none()
                && pr.method == PromptMethod::PTuningV2;
            if shared {
                prefix_rows = PrefixRows::table(past, (ls, p, block));
            } else {
                ws.kv.ensure(dev, ls * b * p * block)?;
                let site = PrefixSite::new((ls, b, p, block), prefix_dropout);
                let buffers: [&dyn KernelArg; 4] = [&past, &table_ptrs, &row_table, &ws.kv.ptr];
                // A block per row of kv [Ls, B, P, 2H] (grid-stride).
                dev.launch(
                    Kernel::ExpandPrefix,
                    ((ls * b * p).clamp(1, 65535) as u32, 1, 1),
                    ROW_BLOCK,
                    &[&buffers[..], &site.args()].concat(),
                )?;
                prefix_rows = PrefixRows::expanded(ws.kv.ptr, (b, p, block));
            }
        }

        // Embeddings.
        ws.x.ensure(dev, rows * h)?;
        ws.x1.ensure(dev, rows * h)?;
        // In bf16 the producer of each GEMM input writes its bf16 copy into
        // ws.bf16, which the GEMM right after reads (`gemm_in`); the GELU
        // output exists only there. The GEMMs write bf16 (qkv16, inter16,
        // out16) for the kernel after each, which adds the bias in f32.
        let bf16 = self.precision == Precision::Bf16;
        let b16 = bf16_scratch(dev, &mut ws.bf16, bf16, rows * inter.max(3 * h))?;
        let out16 = bf16_scratch(dev, &mut ws.out16, bf16, rows * h)?;
        let gemm_in = |f32_input: u64| if bf16 { b16 } else { f32_input };
        if !bf16 {
            ws.act.ensure(dev, rows * inter)?;
        }
        // bf16 inference keeps the residual stream in bf16 alone (Stream):
        // x in x16, x1 in x1_16, which the GEMMs after them read.
        let stream16 = bf16 && !train && Stream::bf16_alone(h);
        if stream16 {
            ws.x16.ensure(dev, rows * h)?;
            ws.x1_16.ensure(dev, rows * h)?;
        }
        let (x_in, x1_in) = if stream16 {
            (ws.x16.ptr, ws.x1_16.ptr)
        } else {
            (gemm_in(ws.x.ptr), gemm_in(ws.x1.ptr))
        };
        let (key, thr, scale, on) = dropout_site(dropout.embeddings());
        let e = &self.embed_ln;
        let (grid, block) = layernorm_launch(rows, h);
        // Prompt tuning: its rows come from kv [B, P, H]; training keeps the
        // LayerNorm's input and stats for the backward to the prompt.
        let prompt_rows = if skip > 0 { ws.kv.ptr } else { 0 };
        let (sum_out, stats) = if skip > 0 && train {
            ws.embed_in.ensure(dev, rows * h)?;
            ws.embed_stats.ensure(dev, rows * 2)?;
            (ws.embed_in.ptr, ws.embed_stats.ptr)
        } else {
            (0, 0)
        };
        dev.launch(
            Kernel::EmbedLayernorm,
            grid,
            block,
            &[
                &ws.ids.ptr,
                &ws.positions.ptr,
                &ws.types.ptr,
                &self.word.ptr,
                &self.position.ptr,
                &self.token_type.ptr,
                &e.weight.ptr,
                &e.bias.ptr,
                &e.eps,
                &ws.x.ptr,
                &(h as i32),
                &key,
                &thr,
                &scale,
                &on,
                &(if stream16 { ws.x16.ptr } else { b16 }),
                &(rows as u64),
                &prompt_rows,
                &(skip as i32),
                &(t as u64),
                &sum_out,
                &stats,
            ],
        )?;

        if train {
            ws.saved
                .resize_with(self.layers.len() - lowest, Saved::default);
        }
        let scale_qk = 1.0 / (hd as f32).sqrt();
        let (ops_bf16, round_tf32) = operands_format(dev, self.precision);
        // Prompt tuning has no prefix keys.
        let ops_len = b * (t + 2 * (p * usize::from(skip == 0) + t)) * h;
        if bf16 {
            ws.qkv16.ensure(dev, rows * 3 * h)?;
        } else {
            ws.qkv.ensure(dev, rows * 3 * h)?;
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let keep = train && l >= lowest;
            let s = if keep {
                &mut ws.saved[l - lowest]
            } else {
                &mut ws.scratch
            };
            let sizes = (rows, h, inter, b * nh * t, ops_len);
            s.ensure(dev, sizes, (bf16, ops_bf16), keep)?;
            // In bf16, the f32 ctx and LayerNorm inputs only where saved.
            let saved_f32 = |ptr: u64| if bf16 && !keep { 0 } else { ptr };

            // qkv = x·Wᵀ, then the attention's operands from it and the prompt.
            let qkv = f32_or_bf16(bf16, ws.qkv.ptr, ws.qkv16.ptr);
            layer.qkv.forward(dev, x_in, rows, gemm_out(qkv))?;
            let (pl, prefix_ptr) = prefix_rows.of_layer(&layers, l);
            let ops = f32_or_bf16(ops_bf16, s.ops.ptr, s.ops16.ptr);
            // A layer whose operands no backward reads, in bf16 on the
            // tensor cores: the attention reads q, k and v from qkv16 itself,
            // and attention_operands writes the prefix's rows alone (T = 0),
            // less the key and value biases (attention_forward_tc's SHIFTED),
            // once for every batch row when they all read one table.
            let from_qkv = ops_bf16 && !keep && dev.attention_from_qkv;
            let shared_prefix = from_qkv && prefix_rows.batch == 0;
            let operand_rows = if from_qkv { 2 * pl } else { t + 2 * (pl + t) };
            if operand_rows > 0 {
                let pieces = operand_rows * hd / operands_per_thread(hd);
                dev.launch(
                    Kernel::AttentionOperands,
                    (
                        pieces.div_ceil(ROW_BLOCK as usize) as u32,
                        nh as u32,
                        if shared_prefix { 1 } else { b as u32 },
                    ),
                    ROW_BLOCK,
                    &[
                        &qkv.0,
                        &qkv.1,
                        &layer.qkv.bias.ptr,
                        &prefix_ptr,
                        &(prefix_rows.batch as u64),
                        &(prefix_rows.row as u64),
                        &ops.0,
                        &ops.1,
                        &(if from_qkv { 0 } else { t as i32 }),
                        &(pl as i32),
                        &(nh as i32),
                        &scale_qk,
                        &(round_tf32 as i32),
                        &(from_qkv as i32),
                    ],
                )?;
            }

            let (key, thr, dscale, on) = dropout_site(dropout.attention_probs(l));
            if from_qkv {
                let prefix16 = if pl > 0 { ops.1 } else { 0 };
                dev.launch(
                    Kernel::AttentionForwardQkvBf16,
                    (t.div_ceil(MMA_TILE) as u32, nh as u32, b as u32),
                    128,
                    &[
                        &qkv.1,
                        &layer.qkv.bias.ptr,
                        &prefix16,
                        &(shared_prefix as i32),
                        &ws.mask.ptr,
                        &saved_f32(s.ctx.ptr),
                        &(t as i32),
                        &(pl as i32),
                        &(nh as i32),
                        &scale_qk,
                        &key,
                        &thr,
                        &dscale,
                        &on,
                        &b16,
                    ],
                )?;
            } else {
                let lse = if keep { s.lse.ptr } else { 0u64 };
                let call = AttentionCall::new(ops, ws.mask.ptr, (b, t, pl, nh));
                call.launch(
                    dev,
                    (self.precision, Kernel::AttentionForward),
                    t,
                    &[&saved_f32(s.ctx.ptr), &lse],
                    &[&key, &thr, &dscale, &on, &b16],
                )?;
            }

            // ln1_in = dropout(ctx·Woᵀ + bo) + x ; x1 = LN1(ln1_in)
            let stream = if stream16 {
                Stream::Bf16 {
                    residual16: ws.x16.ptr,
                    x16: ws.x1_16.ptr,
                }
            } else {
                Stream::F32 {
                    residual: ws.x.ptr,
                    x_out: ws.x1.ptr,
                    x16: b16,
                }
            };
            output_sublayer(
                dev,
                (&layer.attn_out, &layer.ln1),
                (gemm_in(s.ctx.ptr), rows),
                (saved_f32(s.ln1_in.ptr), out16),
                stream,
                if keep { s.ln1_stats.ptr } else { 0 },
                dropout.attention_output(l),
            )?;

            // inter = gelu(x1·W1ᵀ + b1)
            let pre = f32_or_bf16(bf16, s.inter_pre.ptr, s.inter16.ptr);
            layer
                .intermediate
                .forward(dev, x1_in, rows, gemm_out(pre))?;
            // The backward reads the f32 sum where saved; in bf16 it reads
            // inter16 and adds the bias again.
            let saved_sum = if keep && !bf16 { s.inter_pre.ptr } else { 0 };
            let n = rows * inter;
            let lean = bf16
                && inter.is_multiple_of(8)
                && u32::try_from(n).is_ok()
                && [pre.1, layer.intermediate.bias.ptr, b16]
                    .iter()
                    .all(|p| p % 16 == 0);
            if lean {
                // bf16 in and out, nothing saved: 8 elements a thread
                // (kernels/activations.cuh).
                dev.launch_1d(
                    Kernel::BiasGeluBf16,
                    n / 8,
                    &[
                        &pre.1,
                        &layer.intermediate.bias.ptr,
                        &b16,
                        &(n as u64),
                        &(inter as i32),
                    ],
                )?;
            } else {
                dev.launch_1d(
                    Kernel::BiasGelu,
                    n.div_ceil(4), // threads: 4 elements each where rows allow
                    &[
                        &pre.0,
                        &pre.1,
                        &layer.intermediate.bias.ptr,
                        &saved_sum,
                        &ws.act.ptr,
                        &(n as u64),
                        &(inter as i32),
                        &b16,
                    ],
                )?;
            }

            // ln2_in = dropout(inter·W2ᵀ + b2) + x1 ; x = LN2(ln2_in)
            let stream = match (stream16, l + 1 == self.layers.len()) {
                (true, false) => Stream::Bf16 {
                    residual16: ws.x1_16.ptr,
                    x16: ws.x16.ptr,
                },
                (true, true) => Stream::Bf16ToF32 {
                    residual16: ws.x1_16.ptr,
                    x_out: ws.x.ptr,
                },
                (false, _) => Stream::F32 {
                    residual: ws.x1.ptr,
                    x_out: ws.x.ptr,
                    x16: b16,
                },
            };
            output_sublayer(
                dev,
                (&layer.output, &layer.ln2),
                (gemm_in(ws.act.ptr), rows),
                (saved_f32(s.ln2_in.ptr), out16),
                stream,
                if keep { s.ln2_stats.ptr } else { 0 },
                dropout.ffn_output(l),
            )?;
        }
        self.last = Some((b, t, skip));
        Ok(())
    }

    /// Backward of the last [`CudaEncoder::forward_train`] from the gradient
    /// of its output that [`CudaEncoder::head_backward`] left here, into the
    /// resident prompt's gradients.
    pub fn backward(&mut self) -> Result<()> {
        let step = self.step.take().ok_or_else(|| {
            Error::InvalidArgument("CUDA backward without a training forward".into())
        })?;
        if !step.d_out_ready {
            return Err(Error::InvalidArgument(
                "CUDA backward before the head's backward (head_backward)".into(),
            ));
        }
        let c = &self.config;
        let (h, inter, nh) = (c.hidden_size, c.intermediate_size, c.num_attention_heads);
        let (b, t, p) = (step.batch, step.seq, step.prefix);
        let rows = b * t;
        let two_h = 2 * h;
        let input = step.method == PromptMethod::PromptTuning;
        let (ls, block) = table_blocks(step.method, &step.layers, h);
        let lowest = lowest_trained(step.method, &step.layers, self.layers.len());
        let dev = &self.dev;
        let ws = &mut self.ws;
        let dropout = step.dropout;

        ws.d_h.ensure(dev, rows * h)?;
        ws.tmp.ensure(dev, rows * h)?;
        ws.d_qkv.ensure(dev, rows * 3 * h)?;
        // As in the forward: in bf16 the kernel before each GEMM writes the
        // GEMM's input (a gradient) in bf16 only, into ws.bf16; the GEMMs
        // into d(inter) and d(ctx) write bf16 for the kernels after them.
        let bf16 = self.precision == Precision::Bf16;
        // dO [B, NH, T, HD] in the attention operands' format (attention_delta).
        let (ops_bf16, round_tf32) = operands_format(dev, self.precision);
        if ops_bf16 {
            ws.d_out16.ensure(dev, rows * h)?;
        } else {
            ws.d_out.ensure(dev, rows * h)?;
        }
        let d_o = f32_or_bf16(ops_bf16, ws.d_out.ptr, ws.d_out16.ptr);
        let b16 = bf16_scratch(dev, &mut ws.bf16, bf16, rows * inter.max(3 * h))?;
        let d_inter16 = bf16_scratch(dev, &mut ws.d_inter16, bf16, rows * inter)?;
        let d_ctx16 = bf16_scratch(dev, &mut ws.d_ctx16, bf16, rows * h)?;
        if !bf16 {
            ws.d_inter.ensure(dev, rows * inter)?;
            ws.d_ctx.ensure(dev, rows * h)?;
        }
        let d_ctx = f32_or_bf16(bf16, ws.d_ctx.ptr, d_ctx16);
        let d_inter = f32_or_bf16(bf16, ws.d_inter.ptr, d_inter16);
        let gemm_in = |f32_input: u64| if bf16 { b16 } else { f32_input };
        ws.delta.ensure(dev, b * nh * t)?;
        // Not zeroed: every prefixed layer's dK/dV launch writes all of its
        // [B, P, 2H] block.
        ws.d_kv.ensure(dev, ls * b * p * block)?;
        let scale_qk = 1.0 / (c.head_dim() as f32).sqrt();

        for l in (lowest..self.layers.len()).rev() {
            let layer = &self.layers[l];
            let s = &ws.saved[l - lowest];
            // x = LN2(ln2_in): d_h = dLN2 · d_x, and through the FFN
            // output's dropout into tmp (then W2, GELU, W1, + residual)
            layernorm_backward(
                dev,
                (rows, h),
                ws.d_x.ptr,
                s.ln2_in.ptr,
                &layer.ln2,
                s.ln2_stats.ptr,
                ws.d_h.ptr,
                (dropout.ffn_output(l), ws.tmp.ptr, b16),
            )?;
            let (dy, d_out) = (gemm_in(ws.tmp.ptr), (gemm_out(d_inter), false));
            layer.output.backward_input(dev, dy, rows, d_out)?;
            let (pre, pre16) = f32_or_bf16(bf16, s.inter_pre.ptr, s.inter16.ptr);
            dev.launch_1d(
                Kernel::GeluBackward,
                (rows * inter).div_ceil(4), // threads: 4 elements each where rows allow
                &[
                    &pre,
                    &pre16,
                    &layer.intermediate.bias.ptr,
                    &d_inter.0,
                    &d_inter.1,
                    &((rows * inter) as u64),
                    &(inter as i32),
                    &b16,
                ],
            )?;
            let dy = gemm_in(ws.d_inter.ptr);
            let d_h = (GemmOut::F32(ws.d_h.ptr), true);
            layer.intermediate.backward_input(dev, dy, rows, d_h)?;

            // x1 = LN1(ln1_in): d_x = dLN1 · d_h (the residual to x), and
            // through the attention output's dropout into tmp (then Wo)
            layernorm_backward(
                dev,
                (rows, h),
                ws.d_h.ptr,
                s.ln1_in.ptr,
                &layer.ln1,
                s.ln1_stats.ptr,
                ws.d_x.ptr,
                (dropout.attention_output(l), ws.tmp.ptr, b16),
            )?;
            let (dy, d_out) = (gemm_in(ws.tmp.ptr), (gemm_out(d_ctx), false));
            layer.attn_out.backward_input(dev, dy, rows, d_out)?;

            // attention
            // (The prefix keys and values are in the saved operands.)
            let (pl, dprefix_ptr) =
                PrefixRows::expanded(ws.d_kv.ptr, (b, p, two_h)).of_layer(&step.layers, l);
            let (key, thr, dscale, on) = dropout_site(dropout.attention_probs(l));
            let need_below = l > lowest || input;
            dev.launch(
                Kernel::AttentionDelta,
                // A thread per 16 bytes of a head's row (DELTA_LANES).
                ((rows * (h / nh) / 4).div_ceil(256) as u32, nh as u32, 1),
                256,
                &[
                    &s.ctx.ptr,
                    &d_ctx.0,
                    &d_ctx.1,
                    &ws.delta.ptr,
                    &d_o.0,
                    &d_o.1,
                    &(rows as i32),
                    &(nh as i32),
                    &(t as i32),
                    &(round_tf32 as i32),
                ],
            )?;
            let ops = f32_or_bf16(ops_bf16, s.ops.ptr, s.ops16.ptr);
            let call = AttentionCall::new(ops, ws.mask.ptr, (b, t, pl, nh));
            let stats: [&dyn KernelArg; 4] = [&d_o.0, &d_o.1, &s.lse.ptr, &ws.delta.ptr];
            if need_below {
                call.launch(
                    dev,
                    (self.precision, Kernel::AttentionBackwardDq),
                    t,
                    &[&stats[..], &[&ws.d_qkv.ptr]].concat(),
                    &[&scale_qk, &key, &thr, &dscale, &on, &b16],
                )?;
            }
            // Keys: all of them when the layer below needs d(qkv), else only
            // the prefix keys.
            let n_keys = if need_below { pl + t } else { pl };
            if n_keys > 0 {
                let (dqkv, dqkv16) = if need_below {
                    (ws.d_qkv.ptr, b16)
                } else {
                    (0u64, 0u64)
                };
                call.launch(
                    dev,
                    (self.precision, Kernel::AttentionBackwardDkv),
                    n_keys,
                    &[&stats[..], &[&dqkv, &dprefix_ptr]].concat(),
                    &[&(n_keys as i32), &key, &thr, &dscale, &on, &dqkv16],
                )?;
            }
            if need_below {
                // d x = residual (in d_x) + d(qkv)·Wqkv
                let d_x = (GemmOut::F32(ws.d_x.ptr), true);
                let dy = gemm_in(ws.d_qkv.ptr);
                layer.qkv.backward_input(dev, dy, rows, d_x)?;
            }
        }

        if input {
            // d_x = d(embedding output): back through the embeddings'
            // dropout and LayerNorm into d_h; the prompt's rows of it,
            // [B, P, H], into d_kv.
            if let Some(d) = dropout.embeddings() {
                let (key, thr, scale, _) = dropout_site(Some(d));
                let n = (rows * h) as u64;
                dev.launch_1d(
                    Kernel::DropoutApply,
                    rows * h,
                    &[&ws.d_x.ptr, &n, &key, &thr, &scale],
                )?;
            }
            layernorm_backward(
                dev,
                (rows, h),
                ws.d_x.ptr,
                ws.embed_in.ptr,
                &self.embed_ln,
                ws.embed_stats.ptr,
                ws.d_h.ptr,
                (None, ws.tmp.ptr, 0),
            )?;
            gather_sequences(dev, ws.d_h.ptr, ws.d_kv.ptr, (b, p * h, t * h))?;
        }

        // d(prefix table), through the prefix dropout, summed over rows,
        // into the resident prompt: its table's gradient, or through its MLP.
        let resident = self.resident.as_mut().ok_or_else(|| {
            Error::InvalidArgument("CUDA backward without the prompt on the device".into())
        })?;
        let (d_past, accumulate) = resident.table_grad();
        let site = PrefixSite::new((ls, b, p, block), step.prefix_dropout);
        let buffers: [&dyn KernelArg; 2] = [&ws.d_kv.ptr, &d_past];
        let accumulate = accumulate as i32;
        dev.launch_1d(
            Kernel::ReducePrefix,
            p * ls * block,
            &[&buffers[..], &site.args(), &[&accumulate]].concat(),
        )?;
        resident.backward(dev)
    }
}

/// What every attention kernel of kernels.cu takes first: the layer's
/// operands [B, NH, T + 2N, HD] (attention_operands' output: f32, or bf16
/// in ops16) and the mask; then its own buffers; then (T, P, NH); then the
/// rest. Grid: (tiles, NH, B).
struct AttentionCall {
    ops: u64,
    ops16: u64,
    mask: u64,
    shape: (i32, i32, i32),
    batch: usize,
}

impl AttentionCall {
    /// For a layer with `p` prefix keys (0 without).
    fn new(
        (ops, ops16): (u64, u64),
        mask: u64,
        (b, t, p, nh): (usize, usize, usize, usize),
    ) -> Self {
        AttentionCall {
            ops,
            ops16,
            mask,
            shape: (t as i32, p as i32, nh as i32),
            batch: b,
        }
    }

    /// Launches `f32_kernel` (AttentionForward, AttentionBackwardDq or
    /// AttentionBackwardDkv), or its tensor-core twin where the device runs
    /// `precision`'s attention there, over (tiles, NH, B) blocks: tiles of
    /// `rows` queries (keys for dK/dV), 32 per 64 threads for the f32
    /// kernels, 64 per 128 threads for the tensor-core ones.
    fn launch(
        &self,
        dev: &CudaDevice,
        (precision, f32_kernel): (Precision, Kernel),
        rows: usize,
        buffers: &[&dyn KernelArg],
        rest: &[&dyn KernelArg],
    ) -> Result<()> {
        let (kernel, tile, block) = match dev.attention_format(precision) {
            None => (f32_kernel, ATTENTION_TILE, 64),
            Some(format) => {
                let [_, forward, dq, dkv] = format.kernels();
                let kernel = match f32_kernel {
                    Kernel::AttentionBackwardDq => dq,
                    Kernel::AttentionBackwardDkv => dkv,
                    _ => forward,
                };
                (kernel, MMA_TILE, 128)
            }
        };
        let (t, p, nh) = &self.shape;
        let head: [&dyn KernelArg; 3] = [&self.ops, &self.ops16, &self.mask];
        let shape: [&dyn KernelArg; 3] = [t, p, nh];
        let args = [&head[..], buffers, &shape[..], rest].concat();
        dev.launch(
            kernel,
            (rows.div_ceil(tile) as u32, *nh as u32, self.batch as u32),
            block,
            &args,
        )
    }
}

/// The residual stream a sublayer's LayerNorm reads and writes ([rows, H]).
#[derive(Clone, Copy, Debug)]
enum Stream {
    /// The residual read and x_out written in f32, and x_out in bf16 into
    /// `x16` too unless that is 0 (the next GEMM's input in bf16).
    F32 { residual: u64, x_out: u64, x16: u64 },
    /// bf16 inference: the residual read from and x_out written into bf16
    /// alone, as PyTorch keeps a bf16 model's (`residual16_layernorm`,
    /// half the bytes a row); the next GEMM reads `x16` itself.
    Bf16 { residual16: u64, x16: u64 },
    /// The last layer's in bf16 inference: x_out in f32 alone, for the head.
    Bf16ToF32 { residual16: u64, x_out: u64 },
}

impl Stream {
    /// Whether bf16 inference's stream may be bf16 alone: the kernels that
    /// read it hold a row in a warp (h <= 32 × LN_PER_THREAD) and access
    /// 4 values at once.
    fn bf16_alone(h: usize) -> bool {
        h <= 32 * LN_PER_THREAD && h.is_multiple_of(4)
    }
}

/// HF's BertSelfOutput and BertOutput: y = x·Wᵀ (the GEMM; into `y`, or
/// in bf16 into `y16` unless that is 0), then ln_in = dropout(y + bias) +
/// residual and x_out = LN(ln_in) (one fused kernel, a block per row of
/// [rows, H]), the residual and x_out as `stream` says; ln_in goes into `y`
/// (the saved LayerNorm input) and (mean, rstd) into `stats`, unless they
/// are 0.
fn output_sublayer(
    dev: &CudaDevice,
    (dense, ln): (&DevLinear, &DevLayerNorm),
    (x, rows): (u64, usize),
    (y, y16): (u64, u64),
    stream: Stream,
    stats: u64,
    dropout: Option<Dropout>,
) -> Result<()> {
    dense.forward(dev, x, rows, gemm_out((y, y16)))?;
    let (grid, block) = layernorm_launch(rows, dense.out);
    let (residual, x_out, x16) = match stream {
        Stream::F32 {
            residual,
            x_out,
            x16,
        } => (residual, x_out, x16),
        Stream::Bf16 {
            residual16,
            x16: out,
        }
        | Stream::Bf16ToF32 {
            residual16,
            x_out: out,
        } => {
            // Inference from the bf16 GEMM, rows a warp holds (the caller
            // checked Stream::bf16_alone; every DevBuf starts on 256 bytes).
            if dropout.is_some() || stats != 0 || y16 == 0 || !Stream::bf16_alone(dense.out) {
                return Err(Error::Cuda(format!(
                    "a bf16 residual stream is inference's, from a bf16 GEMM, {} wide at most",
                    32 * LN_PER_THREAD
                )));
            }
            let kernel = match stream {
                Stream::Bf16 { .. } => Kernel::Residual16Layernorm,
                _ => Kernel::Residual16LayernormF32,
            };
            let (h, rows) = (dense.out as i32, rows as u64);
            return dev.launch(
                kernel,
                grid,
                block,
                &[
                    &y16,
                    &dense.bias.ptr,
                    &residual16,
                    &ln.weight.ptr,
                    &ln.bias.ptr,
                    &ln.eps,
                    &out,
                    &h,
                    &rows,
                ],
            );
        }
    };
    let arrays = [
        y,
        y16,
        dense.bias.ptr,
        residual,
        ln.weight.ptr,
        ln.bias.ptr,
        x_out,
        x16,
    ];
    let vec4 = dense.out.is_multiple_of(4) && arrays.iter().all(|p| p % 16 == 0);
    let (h, rows) = (dense.out as i32, rows as u64);
    let inputs: [&dyn KernelArg; 8] = [
        &y,
        &y16,
        &dense.bias.ptr,
        &residual,
        &ln.weight.ptr,
        &ln.bias.ptr,
        &ln.eps,
        &x_out,
    ];
    if dropout.is_none() && stats == 0 && dense.out <= 32 * LN_PER_THREAD && vec4 {
        // Inference: the kernel without the training and scalar paths,
        // which leaves room for more rows at once (kernels/layernorm.cuh).
        let rest: [&dyn KernelArg; 3] = [&h, &x16, &rows];
        return dev.launch(
            Kernel::ResidualLayernorm,
            grid,
            block,
            &[&inputs[..], &rest].concat(),
        );
    }
    let (key, thr, scale, on) = dropout_site(dropout);
    let rest: [&dyn KernelArg; 8] = [&stats, &h, &key, &thr, &scale, &on, &x16, &rows];
    dev.launch(
        Kernel::BiasDropoutResidualLayernorm,
        grid,
        block,
        &[&inputs[..], &rest].concat(),
    )
}

/// dx = ∂LN/∂x · dy from the saved input `x` and its stats ([rows, h]),
/// and dropout(dx) at the site before the LayerNorm into `dropped` (f32),
/// or into `dropped16` in bf16 unless that is 0.
#[allow(clippy::too_many_arguments)]
fn layernorm_backward(
    dev: &CudaDevice,
    (rows, h): (usize, usize),
    dy: u64,
    x: u64,
    ln: &DevLayerNorm,
    stats: u64,
    dx: u64,
    (dropout, dropped, dropped16): (Option<Dropout>, u64, u64),
) -> Result<()> {
    let (key, thr, scale, on) = dropout_site(dropout);
    let (grid, block) = layernorm_launch(rows, h);
    dev.launch(
        Kernel::LayernormBackward,
        grid,
        block,
        &[
            &dy,
            &x,
            &ln.weight.ptr,
            &stats,
            &dx,
            &(h as i32),
            &key,
            &thr,
            &scale,
            &on,
            &dropped,
            &dropped16,
            &(rows as u64),
        ],
    )
}

/// Layer `l`'s block of a per-layer prompt buffer at `base` ([Ls, B, P, 2H]
/// f32, Ls the prefixed `layers`, ascending: the expanded keys and values or
/// their gradients): (P, the address of its [B, P, 2H]), or (0, 0) for a
/// layer without a prefix.
/// The prompt's shape (Ls, B, P, 2H) and its dropout site, as
/// expand_prefix and reduce_prefix take them after their buffers.
struct PrefixSite {
    dims: [i32; 4],
    key: u64,
    threshold: u64,
    scale: f32,
    on: i32,
}

impl PrefixSite {
    fn new((ls, b, p, two_h): (usize, usize, usize, usize), dropout: Option<Dropout>) -> Self {
        let (key, threshold, scale, on) = dropout_site(dropout);
        PrefixSite {
            dims: [ls, b, p, two_h].map(|d| d as i32),
            key,
            threshold,
            scale,
            on,
        }
    }

    fn args(&self) -> [&dyn KernelArg; 8] {
        let [ls, b, p, two_h] = &self.dims;
        [
            ls,
            b,
            p,
            two_h,
            &self.key,
            &self.threshold,
            &self.scale,
            &self.on,
        ]
    }
}

/// Where the layers read their prefix keys and values, [P, 2H] in f32 each
/// (gradients alike): the first prefixed layer's at `base`, each next one
/// `layer` values further, batch rows `batch` apart (0: one for all) and
/// prefix rows `row` apart.
#[derive(Clone, Copy, Default)]
struct PrefixRows {
    base: u64,
    p: usize,
    layer: usize,
    batch: usize,
    row: usize,
}

impl PrefixRows {
    /// kv [Ls, B, P, 2H], as expand_prefix writes it (and d_kv).
    fn expanded(kv: u64, (b, p, two_h): (usize, usize, usize)) -> Self {
        PrefixRows {
            base: kv,
            p,
            layer: b * p * two_h,
            batch: p * two_h,
            row: two_h,
        }
    }

    /// The table itself, [P, Ls·2H], the same for every batch row.
    fn table(table: u64, (ls, p, two_h): (usize, usize, usize)) -> Self {
        PrefixRows {
            base: table,
            p,
            layer: two_h,
            batch: 0,
            row: ls * two_h,
        }
    }

    /// (P, the address of layer l's) where `layers` holds l, else (0, 0).
    fn of_layer(&self, layers: &[usize], l: usize) -> (usize, u64) {
        match layers.iter().position(|&x| x == l) {
            Some(k) => (
                self.p,
                self.base + (k * self.layer * std::mem::size_of::<f32>()) as u64,
            ),
            None => (0, 0),
        }
    }
}

/// A buffer as the kernels take it, in f32 or in bf16: (its f32 address,
/// its bf16 address), the one not used 0.
/// dst [B, n] = the first n values of each of B sequences of src, `stride`
/// apart (gather_rows with rows of n): prompt tuning's token rows, or its
/// prompt rows.
fn gather_sequences(
    dev: &CudaDevice,
    src: u64,
    dst: u64,
    (b, n, stride): (usize, usize, usize),
) -> Result<()> {
    dev.launch_1d(
        Kernel::GatherRows,
        b * n,
        &[&src, &dst, &(b as i32), &(n as i32), &(stride as u64)],
    )
}

fn f32_or_bf16(bf16: bool, f32_ptr: u64, bf16_ptr: u64) -> (u64, u64) {
    if bf16 {
        (0, bf16_ptr)
    } else {
        (f32_ptr, 0)
    }
}

/// The format of attention_operands' output on `dev` in `precision`: that
/// of the attention's products, (bf16, f32 rounded to tf32); f32 when
/// neither.
fn operands_format(dev: &CudaDevice, precision: Precision) -> (bool, bool) {
    match dev.attention_format(precision) {
        Some(MmaFormat::Bf16) => (true, false),
        Some(MmaFormat::Tf32) => (false, true),
        _ => (false, false),
    }
}

/// A GEMM's output from such a pair: the bf16 buffer where there is one.
fn gemm_out((f32_ptr, bf16_ptr): (u64, u64)) -> GemmOut {
    if bf16_ptr != 0 {
        GemmOut::Bf16(bf16_ptr)
    } else {
        GemmOut::F32(f32_ptr)
    }
}

/// `scratch` sized for `len` bf16 values and its address when `bf16`, else
/// 0 (no bf16 copies): where the kernels put the next GEMM's input.
fn bf16_scratch(
    dev: &CudaDevice,
    scratch: &mut DevBuf<u16>,
    bf16: bool,
    len: usize,
) -> Result<u64> {
    if !bf16 {
        return Ok(0);
    }
    scratch.ensure(dev, len)?;
    Ok(scratch.ptr)
}
