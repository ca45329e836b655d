//! Mixed-task dynamic batching.
//!
//! Requests for any adapters go into one bounded queue. A dedicated worker
//! thread (the kernels use rayon underneath) takes the first waiting request,
//! then keeps collecting until it holds `max_batch` sequences or `max_wait`
//! has passed, and runs them together:
//!
//! 1. rows are grouped by prefix shape (P and the prefixed layers: P shifts
//!    the positions, the layers decide where keys and values are added);
//! 2. each group (sorted by length, cut into passes of at most `max_batch`
//!    where padding would cost more than a pass: [`plan`]) becomes ONE
//!    [`Batch`] and ONE [`BatchPrompt`] whose per-row keys and values
//!    `kv[k][b]` [P, 2H] are copied from row b's own adapter's folded table;
//! 3. the backbone runs once per chunk;
//! 4. each adapter's head is applied to its own rows' hidden states: the
//!    [CLS] state for pooled heads, every real token for per-token heads. On
//!    a GPU the hidden states stay there: each adapter's head runs over the
//!    pass (engine/cuda/head.rs) and only its logits come down.
//!
//! The encoder treats every batch row independently (its own prefix keys and
//! values, its own padding mask), so a row's logits are those of its adapter
//! alone, up to float rounding.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::engine::cuda::encoder::{Prompt, PromptSource};
use crate::engine::cuda::CudaEncoder;
use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::bert::BertModel;
use crate::model::prefix::BatchPrompt;
use crate::serve::metrics::Metrics;
use crate::serve::registry::ServedAdapter;

/// Token ids and token type ids of one tokenized sequence.
pub type Sequence = (Vec<u32>, Vec<u32>);

/// One row of a mixed batch: a sequence and the adapter it is for.
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    pub adapter: &'a ServedAdapter,
    pub sequence: &'a Sequence,
}

/// What one more forward pass costs, in tokens of work: the fixed part of a
/// pass (thread fan-out, small GEMMs, the heads). About 50 tokens on
/// all-MiniLM-L6-v2 with 2 cores (batch-1 forwards against batched ones).
pub const PASS_OVERHEAD_TOKENS: f64 = 48.0;

/// Splits rows into forward passes: rows of the same prefix shape together,
/// sorted by length, at most `max_batch` per pass, and cut where padding
/// short rows to a long one would cost more than one more pass (a row of a
/// pass costs its longest length T, times 1 + T/3H for attention). Returns
/// row indices per pass.
pub fn plan(rows: &[Row<'_>], max_batch: usize) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        match groups
            .iter_mut()
            .find(|g| rows[g[0]].adapter.same_shape(row.adapter))
        {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    let mut passes = Vec::new();
    for mut group in groups {
        group.sort_by_key(|&i| rows[i].sequence.0.len());
        let lens: Vec<usize> = group.iter().map(|&i| rows[i].sequence.0.len()).collect();
        let hidden = rows[group[0]].adapter.info.backbone.hidden_size.max(1);
        let mut start = 0;
        for end in cut_points(&lens, max_batch.max(1), hidden) {
            passes.push(group[start..end].to_vec());
            start = end;
        }
    }
    passes
}

/// Ends of the passes over ascending `lens` that minimise the estimated
/// cost (dynamic programming over the cut points).
fn cut_points(lens: &[usize], max_batch: usize, hidden: usize) -> Vec<usize> {
    let n = lens.len();
    // Integer costs in units of 1/(3H) token, so that ties are exact.
    let scale = 3 * hidden as u64;
    let row_cost = |t: usize| t as u64 * (scale + t as u64);
    let overhead = (PASS_OVERHEAD_TOKENS * scale as f64) as u64;
    let mut best = vec![u64::MAX; n + 1];
    let mut from = vec![0; n + 1];
    best[0] = 0;
    for j in 1..=n {
        // Latest cut first: on a tie the earlier passes are the full ones.
        for i in (j.saturating_sub(max_batch)..j).rev() {
            let c = best[i] + (j - i) as u64 * row_cost(lens[j - 1]) + overhead;
            if c < best[j] {
                best[j] = c;
                from[j] = i;
            }
        }
    }
    let mut ends = Vec::new();
    let mut j = n;
    while j > 0 {
        ends.push(j);
        j = from[j];
    }
    ends.reverse();
    ends
}

/// One forward pass over rows that share a prefix shape: logits per row,
/// [C] for pooled heads (C = 1 for regression and multiple choice), [T, C]
/// over the row's own T tokens (no padding) for per-token heads (tagging,
/// QA start/end).
pub fn forward_group(
    backbone: &BertModel,
    gpu: Option<&mut CudaEncoder>,
    pad_id: u32,
    rows: &[Row<'_>],
) -> Result<Vec<Vec<f32>>> {
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    if let Some(bad) = rows.iter().find(|r| !r.adapter.same_shape(first.adapter)) {
        return Err(Error::InvalidArgument(format!(
            "adapters {:?} and {:?} have different prefix shapes and cannot share a forward pass",
            first.adapter.name, bad.adapter.name
        )));
    }
    let h = backbone.config.hidden_size;
    let p = first.adapter.prefix_len;
    let method = first.adapter.method;
    let sequences: Vec<Sequence> = rows.iter().map(|r| r.sequence.clone()).collect();
    let batch = Batch::pad(&sequences, pad_id)?;
    let Some(enc) = gpu else {
        // On the CPU, each row's prompt (a layer's keys and values, or the
        // input embeddings) from its adapter's table.
        let block = method.block(h);
        let kv = (0..first.adapter.width() / block)
            .map(|k| {
                let mut buf = vec![0.0; rows.len() * p * block];
                for (row, dst) in rows.iter().zip(buf.chunks_mut(p * block)) {
                    let width = row.adapter.width();
                    for (i, d) in dst.chunks_mut(block).enumerate() {
                        d.copy_from_slice(&row.adapter.past[i * width + k * block..][..block]);
                    }
                }
                buf
            })
            .collect();
        let prompt = BatchPrompt {
            method,
            len: p,
            layers: first.adapter.layers.clone(),
            kv,
        };
        let hidden = backbone.forward(&batch, Some(&prompt))?;
        // Prompt tuning's hidden state has the prompt's P rows in front of
        // each sequence.
        let skip = method.rows_in_front(p);
        return Ok(heads_on_host(
            backbone,
            &hidden,
            batch.seq + skip,
            skip,
            rows,
        ));
    };
    // On a GPU each adapter's table goes up once (the device keeps it while
    // the adapter lives), and each pass sends which table each row reads
    // (the device expands them); the hidden state stays there: each
    // adapter's head runs over every row of the pass (the pooler on B [CLS]
    // rows or a C-wide classifier on B·T rows, small next to the encoder)
    // and only its logits come down, of which its own rows' are kept.
    let adapters = by_adapter(rows);
    let tables: Vec<Arc<[f32]>> = adapters
        .iter()
        .map(|members| Arc::clone(&rows[members[0]].adapter.past))
        .collect();
    let mut row_table = vec![0u32; rows.len()];
    for (t, members) in adapters.iter().enumerate() {
        for &b in members {
            row_table[b] = t as u32;
        }
    }
    enc.encode(
        &batch,
        Some(Prompt {
            method,
            len: p,
            layers: &first.adapter.layers,
            source: PromptSource::PerRow {
                tables: &tables,
                row_table: &row_table,
            },
        }),
    )?;
    let mut out: Vec<Vec<f32>> = vec![Vec::new(); rows.len()];
    for members in adapters {
        let head = &rows[members[0]].adapter.head;
        enc.head_forward(head, None)?;
        // [B, C] pooled, [B·T, C] per token.
        let logits = {
            let (dev, device_head) = enc.head();
            device_head.logits(dev)?
        };
        let c = head.num_labels();
        for b in members {
            out[b] = if head.per_token {
                // The row's own tokens: [T_b, C].
                logits[b * batch.seq * c..][..rows[b].sequence.0.len() * c].to_vec()
            } else {
                logits[b * c..][..c].to_vec()
            };
        }
    }
    Ok(out)
}

/// The rows of each adapter of a pass, adapters in order of first row.
fn by_adapter(rows: &[Row<'_>]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        match groups
            .iter_mut()
            .find(|g| std::ptr::eq(rows[g[0]].adapter, row.adapter))
        {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    groups
}

/// Each adapter's head on its own rows of the pass's `hidden` state [B·S, H]
/// (see [`forward_group`]): the members' first rows for pooled heads ([CLS],
/// or prompt tuning's first virtual token, as PEFT pools), their real tokens
/// (after `skip` prompt rows) back to back for per-token heads.
fn heads_on_host(
    backbone: &BertModel,
    hidden: &[f32],
    seq: usize,
    skip: usize,
    rows: &[Row<'_>],
) -> Vec<Vec<f32>> {
    let h = backbone.config.hidden_size;
    let mut out: Vec<Vec<f32>> = vec![Vec::new(); rows.len()];
    for members in by_adapter(rows) {
        let head = &rows[members[0]].adapter.head;
        let c = head.num_labels();
        if head.per_token {
            // The members' real tokens, back to back: [Σ T_b, H].
            let lens: Vec<usize> = members.iter().map(|&b| rows[b].sequence.0.len()).collect();
            let mut states = Vec::with_capacity(lens.iter().sum::<usize>() * h);
            for (&b, &t) in members.iter().zip(&lens) {
                states.extend_from_slice(&hidden[(b * seq + skip) * h..][..t * h]);
            }
            let total = states.len() / h;
            let logits = head.forward(None, &states, total, 1, None).logits;
            let mut at = 0;
            for (&b, &t) in members.iter().zip(&lens) {
                out[b] = logits[at * c..(at + t) * c].to_vec();
                at += t;
            }
        } else {
            // Pooled heads read each member's [CLS] state.
            let mut cls = vec![0.0; members.len() * h];
            for (dst, &b) in cls.chunks_mut(h).zip(&members) {
                dst.copy_from_slice(&hidden[b * seq * h..][..h]);
            }
            let logits = head
                .forward(backbone.pooler.as_ref(), &cls, members.len(), 1, None)
                .logits;
            for (row, &b) in logits.chunks(c).zip(&members) {
                out[b] = row.to_vec();
            }
        }
    }
    out
}

/// Runs any rows, of any adapters: [`plan`], then [`forward_group`] per pass.
/// Logits per row, in the order given.
pub fn forward_mixed(
    backbone: &BertModel,
    mut gpu: Option<&mut CudaEncoder>,
    pad_id: u32,
    rows: &[Row<'_>],
    max_batch: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut out = vec![Vec::new(); rows.len()];
    for pass in plan(rows, max_batch) {
        let chunk: Vec<Row<'_>> = pass.iter().map(|&i| rows[i]).collect();
        for (logits, &i) in forward_group(backbone, gpu.as_deref_mut(), pad_id, &chunk)?
            .into_iter()
            .zip(&pass)
        {
            out[i] = logits;
        }
    }
    Ok(out)
}

/// What a request gets back: logits per sequence (see [`forward_group`]),
/// or why not.
pub type Reply = std::result::Result<Vec<Vec<f32>>, String>;

/// One request's sequences, all for one adapter.
pub struct Job {
    pub adapter: Arc<ServedAdapter>,
    pub sequences: Vec<Sequence>,
    pub reply: tokio::sync::oneshot::Sender<Reply>,
}

/// The batching knobs.
#[derive(Clone, Copy, Debug)]
pub struct BatchOptions {
    /// Sequences per forward pass.
    pub max_batch: usize,
    /// How long the first request of a batch waits for company.
    pub max_wait: Duration,
    /// Requests waiting at most; one more is refused (503).
    pub queue: usize,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue holds `queue` requests already.
    Full,
    /// The server is shutting down.
    Closed,
}

/// Holds the worker before its next forward pass while paused (maintenance
/// and tests: a paused worker lets the queue fill).
#[derive(Debug, Default)]
struct Gate {
    paused: Mutex<bool>,
    resumed: Condvar,
}

impl Gate {
    fn wait_open(&self) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        while *paused {
            paused = self.resumed.wait(paused).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn set(&self, value: bool) {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = value;
        self.resumed.notify_all();
    }
}

/// Resumes the worker when dropped.
pub struct PauseGuard {
    gate: Arc<Gate>,
}

impl Drop for PauseGuard {
    fn drop(&mut self) {
        self.gate.set(false);
    }
}

/// The queue and its worker thread.
pub struct Batcher {
    sender: Mutex<Option<SyncSender<Job>>>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    gate: Arc<Gate>,
    closed: AtomicBool,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Batcher {
    /// Starts the worker thread over `backbone` (run on `gpu` when given).
    pub fn start(
        backbone: Arc<BertModel>,
        gpu: Option<CudaEncoder>,
        pad_id: u32,
        options: BatchOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        let capacity = options.queue.max(1);
        let (tx, rx) = sync_channel(capacity);
        let depth = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Gate::default());
        let worker = Worker {
            backbone,
            gpu,
            pad_id,
            options,
            metrics,
            depth: Arc::clone(&depth),
            gate: Arc::clone(&gate),
        };
        let handle = std::thread::Builder::new()
            .name("ptuning-batcher".into())
            .spawn(move || worker.run(rx))
            .expect("spawn the batcher thread");
        Batcher {
            sender: Mutex::new(Some(tx)),
            depth,
            capacity,
            gate,
            closed: AtomicBool::new(false),
            worker: Mutex::new(Some(handle)),
        }
    }

    /// Queues a job without waiting.
    pub fn submit(&self, job: Job) -> std::result::Result<(), SubmitError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(SubmitError::Closed);
        }
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = sender.as_ref() else {
            return Err(SubmitError::Closed);
        };
        self.depth.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Full,
                    TrySendError::Disconnected(_) => SubmitError::Closed,
                })
            }
        }
    }

    /// Requests queued and not yet taken by the worker.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Holds the worker before its next forward pass until the guard drops.
    pub fn pause(&self) -> PauseGuard {
        self.gate.set(true);
        PauseGuard {
            gate: Arc::clone(&self.gate),
        }
    }

    /// Refuses new jobs, lets the worker finish every queued one, and waits
    /// for it. Idempotent.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        let handle = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.close();
    }
}

struct Worker {
    backbone: Arc<BertModel>,
    gpu: Option<CudaEncoder>,
    pad_id: u32,
    options: BatchOptions,
    metrics: Arc<Metrics>,
    depth: Arc<AtomicUsize>,
    gate: Arc<Gate>,
}

impl Worker {
    fn take(&self, job: Job) -> Job {
        self.depth.fetch_sub(1, Ordering::SeqCst);
        job
    }

    fn run(mut self, rx: Receiver<Job>) {
        let max_batch = self.options.max_batch.max(1);
        let mut carry: Option<Job> = None;
        loop {
            let first = match carry.take() {
                Some(job) => job,
                None => match rx.recv() {
                    Ok(job) => self.take(job),
                    Err(_) => break,
                },
            };
            self.gate.wait_open();
            let deadline = Instant::now() + self.options.max_wait;
            let mut rows = first.sequences.len();
            let mut jobs = vec![first];
            while rows < max_batch {
                let now = Instant::now();
                let next = if now >= deadline {
                    match rx.try_recv() {
                        Ok(job) => job,
                        Err(_) => break,
                    }
                } else {
                    match rx.recv_timeout(deadline - now) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                };
                let next = self.take(next);
                if rows + next.sequences.len() > max_batch {
                    carry = Some(next);
                    break;
                }
                rows += next.sequences.len();
                jobs.push(next);
            }
            self.process(jobs);
        }
    }

    /// Runs the jobs' rows together and answers each job. A failing pass
    /// fails only the jobs with rows in it.
    fn process(&mut self, jobs: Vec<Job>) {
        let mut owner = Vec::new();
        let mut rows = Vec::new();
        for (j, job) in jobs.iter().enumerate() {
            for sequence in &job.sequences {
                owner.push(j);
                rows.push(Row {
                    adapter: &job.adapter,
                    sequence,
                });
            }
        }
        let mut logits: Vec<Vec<f32>> = vec![Vec::new(); rows.len()];
        let mut failed: Vec<Option<String>> = vec![None; jobs.len()];
        for pass in plan(&rows, self.options.max_batch) {
            let chunk: Vec<Row<'_>> = pass.iter().map(|&i| rows[i]).collect();
            let started = Instant::now();
            let result = catch_unwind(AssertUnwindSafe(|| {
                forward_group(&self.backbone, self.gpu.as_mut(), self.pad_id, &chunk)
            }));
            let mut adapters: Vec<&str> = chunk.iter().map(|r| r.adapter.name.as_str()).collect();
            adapters.sort_unstable();
            adapters.dedup();
            self.metrics
                .record_batch(chunk.len(), adapters.len(), started.elapsed().as_secs_f64());
            match result {
                Ok(Ok(out)) => {
                    for (l, &i) in out.into_iter().zip(&pass) {
                        logits[i] = l;
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!("forward pass failed: {e}");
                    for &i in &pass {
                        failed[owner[i]] = Some(e.to_string());
                    }
                }
                Err(_) => {
                    tracing::error!("forward pass panicked");
                    for &i in &pass {
                        failed[owner[i]] = Some("the forward pass failed".into());
                    }
                }
            }
        }
        drop(rows);
        let mut logits = logits.into_iter();
        for (job, failure) in jobs.into_iter().zip(failed) {
            let mine: Vec<Vec<f32>> = logits.by_ref().take(job.sequences.len()).collect();
            let reply = match failure {
                Some(e) => Err(e),
                None => Ok(mine),
            };
            // The client may have gone away; nothing to do then.
            let _ = job.reply.send(reply);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cut_points;

    #[test]
    fn passes_split_by_length_and_size() {
        // Equal lengths: only max_batch cuts.
        assert_eq!(cut_points(&[20; 10], 4, 384), [4, 8, 10]);
        assert_eq!(cut_points(&[20; 8], 32, 384), [8]);
        // Short rows are not padded to long ones when a pass is cheaper.
        let mut lens = vec![10; 16];
        lens.extend([200; 16]);
        assert_eq!(cut_points(&lens, 32, 384), [16, 32]);
        // A single slightly longer row is not worth a pass of its own.
        let mut lens = vec![30; 8];
        lens.push(33);
        assert_eq!(cut_points(&lens, 32, 384), [9]);
        assert!(cut_points(&[], 8, 384).is_empty());
    }
}
