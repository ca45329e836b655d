//! Server metrics in the Prometheus text exposition format (version 0.0.4),
//! kept by hand: a few counters and histograms behind mutexes.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Label for predict requests naming no loaded adapter, so that arbitrary
/// names in URLs cannot grow the label set.
pub const UNKNOWN_ADAPTER: &str = "_unknown";

/// Request latency buckets, seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Sequences per forward pass.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last entry is +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += value;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Appends the `_bucket`, `_sum` and `_count` lines; `labels` is either
    /// empty or `key="value"` pairs joined by commas.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c;
            let le = match self.bounds.get(i) {
                Some(b) => format!("{b}"),
                None => "+Inf".into(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug)]
struct Inner {
    /// (adapter, HTTP status) → predict requests.
    requests: BTreeMap<(String, u16), u64>,
    /// adapter → predict latency, seconds.
    latency: BTreeMap<String, Histogram>,
    batch_size: Histogram,
    forward_seconds: Histogram,
    /// Forward passes that held rows of more than one adapter.
    mixed_batches: u64,
}

#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
    in_flight: AtomicUsize,
}

/// Counts a predict request as in flight until dropped (also when the
/// client goes away and the handler is cancelled).
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            inner: Mutex::new(Inner {
                requests: BTreeMap::new(),
                latency: BTreeMap::new(),
                batch_size: Histogram::new(BATCH_BUCKETS),
                forward_seconds: Histogram::new(LATENCY_BUCKETS),
                mixed_batches: 0,
            }),
            in_flight: AtomicUsize::new(0),
        }
    }
}

/// What [`Metrics::render`] reads from elsewhere at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub adapters: usize,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a predict request in flight for the guard's lifetime.
    pub fn start_request(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self)
    }

    /// Predict requests received and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// One predict request, answered with `status` after `seconds`.
    pub fn record_request(&self, adapter: &str, status: u16, seconds: f64) {
        let mut m = self.lock();
        *m.requests.entry((adapter.to_string(), status)).or_default() += 1;
        m.latency
            .entry(adapter.to_string())
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
            .observe(seconds);
    }

    /// One forward pass of `rows` sequences from `adapters` distinct adapters.
    pub fn record_batch(&self, rows: usize, adapters: usize, seconds: f64) {
        let mut m = self.lock();
        m.batch_size.observe(rows as f64);
        m.forward_seconds.observe(seconds);
        if adapters > 1 {
            m.mixed_batches += 1;
        }
    }

    /// Forward passes so far.
    pub fn batches(&self) -> u64 {
        self.lock().batch_size.count()
    }

    /// The exposition text.
    pub fn render(&self, gauges: Gauges) -> String {
        let m = self.lock();
        let mut out = String::new();
        out.push_str(
            "# HELP ptuning_requests_total Predict requests by adapter and HTTP status.\n\
             # TYPE ptuning_requests_total counter\n",
        );
        for ((adapter, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "ptuning_requests_total{{adapter=\"{}\",status=\"{status}\"}} {n}",
                escape(adapter)
            );
        }
        out.push_str(
            "# HELP ptuning_request_duration_seconds Predict latency, from the request's arrival to its answer.\n\
             # TYPE ptuning_request_duration_seconds histogram\n",
        );
        for (adapter, h) in &m.latency {
            h.render(
                &mut out,
                "ptuning_request_duration_seconds",
                &format!("adapter=\"{}\"", escape(adapter)),
            );
        }
        out.push_str(
            "# HELP ptuning_batch_size Sequences per forward pass of the backbone.\n\
             # TYPE ptuning_batch_size histogram\n",
        );
        m.batch_size.render(&mut out, "ptuning_batch_size", "");
        out.push_str(
            "# HELP ptuning_forward_duration_seconds Time of one forward pass (backbone and heads).\n\
             # TYPE ptuning_forward_duration_seconds histogram\n",
        );
        m.forward_seconds
            .render(&mut out, "ptuning_forward_duration_seconds", "");
        let _ = write!(
            out,
            "# HELP ptuning_mixed_batches_total Forward passes that held rows of more than one adapter.\n\
             # TYPE ptuning_mixed_batches_total counter\n\
             ptuning_mixed_batches_total {}\n\
             # HELP ptuning_requests_in_flight Predict requests received and not yet answered.\n\
             # TYPE ptuning_requests_in_flight gauge\n\
             ptuning_requests_in_flight {}\n\
             # HELP ptuning_queue_depth Requests waiting for the model.\n\
             # TYPE ptuning_queue_depth gauge\n\
             ptuning_queue_depth {}\n\
             # HELP ptuning_queue_capacity Requests the queue holds before answering 503.\n\
             # TYPE ptuning_queue_capacity gauge\n\
             ptuning_queue_capacity {}\n\
             # HELP ptuning_adapters_loaded Adapters currently loaded.\n\
             # TYPE ptuning_adapters_loaded gauge\n\
             ptuning_adapters_loaded {}\n",
            m.mixed_batches,
            self.in_flight(),
            gauges.queue_depth, gauges.queue_capacity, gauges.adapters
        );
        out
    }
}

/// Escapes a label value (backslash, quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 1.5, 9.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"2\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 4\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 12.5\n"), "{out}");
    }
}
