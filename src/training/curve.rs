//! `training_curve.svg`: training loss and the dev metric per epoch, as a
//! self-contained SVG that any browser or image viewer opens, so a run can be
//! judged at a glance without Python or a plotting library.
//!
//! Two panels side by side, one per quantity, because loss and metric have
//! unrelated scales and units; each has its own nicely rounded y axis, integer
//! epoch ticks, grid lines and axis labels. The best dev epoch is ringed and
//! named in the title.

use std::fmt::Write as _;
use std::path::Path;

use crate::atomic_file::write_atomic;
use crate::error::Result;

/// One epoch of the curve.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochPoint {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss of the epoch.
    pub train_loss: f64,
    /// The dev metric after the epoch, if evaluated; higher is better (the
    /// best epoch is the highest), as for every GLUE/SuperGLUE metric.
    pub dev_metric: Option<f64>,
    /// The metric's name ("accuracy", "f1", ...).
    pub metric_name: String,
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 420.0;
/// Top edge of the plot areas (below title and legend).
const PLOT_TOP: f64 = 78.0;
/// Bottom edge of the plot areas (above tick labels and the x label).
const PLOT_BOTTOM: f64 = HEIGHT - 62.0;
/// Left margin of a panel (room for tick labels and the y label).
const PANEL_LEFT: f64 = 76.0;
const PANEL_RIGHT: f64 = 24.0;
const LOSS_COLOR: &str = "#1f77b4";
const DEV_COLOR: &str = "#e6550d";
const FONT: &str = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\"";
/// Above this many epochs the per-point markers would clutter the line.
const MAX_MARKERS: usize = 60;

/// Writes the curve of `epochs` to `path` (atomically).
pub fn write_training_curve(path: &Path, epochs: &[EpochPoint]) -> Result<()> {
    write_atomic(path, render_training_curve(epochs).as_bytes())
}

/// The SVG document of [`write_training_curve`]. The loss line is the
/// `<polyline class="loss">`, the dev line `<polyline class="dev">`, each with
/// one point per epoch that has a finite value, in epoch order.
pub fn render_training_curve(epochs: &[EpochPoint]) -> String {
    let mut points: Vec<&EpochPoint> = epochs.iter().collect();
    points.sort_by_key(|p| p.epoch);
    let metric = points
        .iter()
        .find(|p| p.dev_metric.is_some())
        .or(points.first())
        .map(|p| p.metric_name.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "metric".to_string());
    let loss: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.train_loss.is_finite())
        .map(|p| (p.epoch as f64, p.train_loss))
        .collect();
    let dev: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| p.dev_metric.map(|m| (p.epoch as f64, m)))
        .filter(|(_, m)| m.is_finite())
        .collect();
    // Best = highest; the first epoch reaching it, as early stopping keeps it.
    let best = dev
        .iter()
        .copied()
        .fold(None, |best: Option<(f64, f64)>, (e, m)| match best {
            Some((_, b)) if b >= m => best,
            _ => Some((e, m)),
        });
    let epoch_range = points
        .first()
        .zip(points.last())
        .map(|(a, b)| (a.epoch as f64, b.epoch as f64));

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\">"
    );
    let _ = writeln!(
        svg,
        "<rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"white\"/>"
    );
    let mut title = String::from("Training curve");
    if let Some((e, m)) = best {
        let _ = write!(
            title,
            ": best dev {} {} at epoch {}",
            escape(&metric),
            format_value(m),
            e
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"30\" text-anchor=\"middle\" font-size=\"19\" font-weight=\"bold\" {FONT}>{title}</text>",
        WIDTH / 2.0
    );
    legend(&mut svg, &metric);

    let half = WIDTH / 2.0;
    let panels = [
        Panel {
            left: PANEL_LEFT,
            right: half - PANEL_RIGHT,
            name: "training loss".to_string(),
            class: "loss",
            color: LOSS_COLOR,
            data: &loss,
            best: None,
            empty: "no training loss recorded",
        },
        Panel {
            left: half + PANEL_LEFT,
            right: WIDTH - PANEL_RIGHT,
            name: format!("dev {}", escape(&metric)),
            class: "dev",
            color: DEV_COLOR,
            data: &dev,
            best,
            empty: "no dev evaluation",
        },
    ];
    for panel in &panels {
        panel.draw(&mut svg, epoch_range);
    }
    svg.push_str("</svg>\n");
    svg
}

/// The legend, centred under the title: a line sample and a name per series.
fn legend(svg: &mut String, metric: &str) {
    let y = 54.0;
    let entries = [
        (LOSS_COLOR, "training loss".to_string()),
        (DEV_COLOR, format!("dev {}", escape(metric))),
    ];
    // Rough text width: 7.5 px per character at font-size 13.
    let widths: Vec<f64> = entries
        .iter()
        .map(|(_, t)| 34.0 + 7.5 * t.chars().count() as f64)
        .collect();
    let total: f64 = widths.iter().sum::<f64>() + 24.0 * (entries.len() - 1) as f64;
    let mut x = (WIDTH - total) / 2.0;
    for ((color, text), w) in entries.iter().zip(widths) {
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{y}\" x2=\"{:.1}\" y2=\"{y}\" stroke=\"{color}\" stroke-width=\"2.5\"/>\
             <circle cx=\"{:.1}\" cy=\"{y}\" r=\"3.5\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"13\" {FONT}>{text}</text>",
            x + 24.0,
            x + 12.0,
            x + 30.0,
            y + 4.5
        );
        x += w + 24.0;
    }
}

struct Panel<'a> {
    left: f64,
    right: f64,
    /// Already XML-escaped.
    name: String,
    class: &'static str,
    color: &'static str,
    data: &'a [(f64, f64)],
    /// (epoch, value) to ring.
    best: Option<(f64, f64)>,
    empty: &'static str,
}

impl Panel<'_> {
    fn draw(&self, svg: &mut String, epoch_range: Option<(f64, f64)>) {
        let (left, right, top, bottom) = (self.left, self.right, PLOT_TOP, PLOT_BOTTOM);
        let mid_x = (left + right) / 2.0;
        // Axis labels.
        let _ = writeln!(
            svg,
            "<text x=\"{mid_x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"13\" {FONT}>epoch</text>",
            HEIGHT - 18.0
        );
        let label_x = left - 56.0;
        let label_y = (top + bottom) / 2.0;
        let _ = writeln!(
            svg,
            "<text x=\"{label_x:.1}\" y=\"{label_y:.1}\" text-anchor=\"middle\" font-size=\"13\" transform=\"rotate(-90 {label_x:.1} {label_y:.1})\" {FONT}>{}</text>",
            self.name
        );
        let Some((first, last)) = epoch_range.filter(|_| !self.data.is_empty()) else {
            self.frame(svg);
            let _ = writeln!(
                svg,
                "<text x=\"{mid_x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"14\" fill=\"#888\" {FONT}>{}</text>",
                (top + bottom) / 2.0,
                self.empty
            );
            return;
        };

        // x: the epochs, padded half a step so end points sit off the frame.
        let (x_lo, x_hi) = if first == last {
            (first - 1.0, last + 1.0)
        } else {
            let pad = ((last - first) * 0.03).max(0.25);
            (first - pad, last + pad)
        };
        let x_step = integer_step(last - first);
        let sx = |e: f64| left + (e - x_lo) / (x_hi - x_lo) * (right - left);

        // y: nice ticks covering the data.
        let (d_lo, d_hi) = self
            .data
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, v)| {
                (lo.min(v), hi.max(v))
            });
        let (y_lo, y_hi, y_step) = nice_ticks(d_lo, d_hi);
        let sy = |v: f64| bottom - (v - y_lo) / (y_hi - y_lo) * (bottom - top);

        // Grid and tick labels.
        let decimals = decimals_for(y_step);
        let mut v = y_lo;
        while v <= y_hi + y_step * 1e-6 {
            let y = sy(v);
            let _ = writeln!(
                svg,
                "<line x1=\"{left:.1}\" y1=\"{y:.2}\" x2=\"{right:.1}\" y2=\"{y:.2}\" stroke=\"#e3e3e3\" stroke-width=\"1\"/>\
                 <text x=\"{:.1}\" y=\"{:.2}\" text-anchor=\"end\" font-size=\"11\" fill=\"#333\" {FONT}>{}</text>",
                left - 7.0,
                y + 4.0,
                format_fixed(v, decimals)
            );
            v += y_step;
        }
        let mut e = (first / x_step).ceil() * x_step;
        while e <= last + 1e-9 {
            let x = sx(e);
            let _ = writeln!(
                svg,
                "<line x1=\"{x:.2}\" y1=\"{bottom:.1}\" x2=\"{x:.2}\" y2=\"{:.1}\" stroke=\"#333\" stroke-width=\"1\"/>\
                 <text x=\"{x:.2}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"#333\" {FONT}>{}</text>",
                bottom + 5.0,
                bottom + 19.0,
                e
            );
            e += x_step;
        }
        self.frame(svg);

        // The series.
        let coords: Vec<(f64, f64)> = self.data.iter().map(|&(e, v)| (sx(e), sy(v))).collect();
        let pts: Vec<String> = coords
            .iter()
            .map(|(x, y)| format!("{x:.2},{y:.2}"))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline class=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2.5\" stroke-linejoin=\"round\" points=\"{}\"/>",
            self.class,
            self.color,
            pts.join(" ")
        );
        if coords.len() <= MAX_MARKERS {
            for (x, y) in &coords {
                let _ = writeln!(
                    svg,
                    "<circle cx=\"{x:.2}\" cy=\"{y:.2}\" r=\"3.5\" fill=\"{}\"/>",
                    self.color
                );
            }
        }
        if let Some((e, v)) = self.best {
            let _ = writeln!(
                svg,
                "<circle class=\"best\" cx=\"{:.2}\" cy=\"{:.2}\" r=\"8\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>",
                sx(e),
                sy(v),
                self.color
            );
        }
    }

    fn frame(&self, svg: &mut String) {
        let _ = writeln!(
            svg,
            "<rect x=\"{:.1}\" y=\"{PLOT_TOP:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"#333\" stroke-width=\"1\"/>",
            self.left,
            self.right - self.left,
            PLOT_BOTTOM - PLOT_TOP
        );
    }
}

/// Rounded axis bounds and tick step covering [lo, hi] with about five ticks,
/// steps of 1, 2 or 5 times a power of ten. A flat series gets a small band
/// around its value so it is drawn mid-panel rather than on the frame.
fn nice_ticks(lo: f64, hi: f64) -> (f64, f64, f64) {
    let (lo, hi) = if hi - lo <= f64::EPSILON * lo.abs().max(1.0) {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.05 };
        (lo - pad, hi + pad)
    } else {
        (lo, hi)
    };
    let step = nice_step((hi - lo) / 4.0);
    let y_lo = (lo / step).floor() * step;
    let y_hi = (hi / step).ceil() * step;
    (y_lo, y_hi, step)
}

/// The 1-2-5 step at or above `raw`.
fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// An integer epoch step giving at most about ten ticks over `span` epochs.
fn integer_step(span: f64) -> f64 {
    if span <= 10.0 {
        1.0
    } else {
        nice_step(span / 10.0).max(1.0).round()
    }
}

/// Decimals that tell ticks `step` apart.
fn decimals_for(step: f64) -> usize {
    (-step.log10().floor()).clamp(0.0, 6.0) as usize
}

fn format_fixed(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    // Avoid "-0.00" on the zero line.
    if s.trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        s.trim_start_matches('-').to_string()
    } else {
        s
    }
}

/// A metric value for the title: four significant decimals for [0, 1]-ish
/// metrics, fewer for large numbers.
fn format_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_data() {
        let (lo, hi, step) = nice_ticks(0.312, 0.947);
        assert_eq!(step, 0.2);
        assert!(lo <= 0.312 && hi >= 0.947);
        assert!((lo / step - (lo / step).round()).abs() < 1e-9);
        let (lo, hi, _) = nice_ticks(0.5, 0.5);
        assert!(lo < 0.5 && hi > 0.5);
        assert_eq!(integer_step(3.0), 1.0);
        assert_eq!(integer_step(99.0), 10.0);
        assert_eq!(format_fixed(-0.0001, 2), "0.00");
    }
}
