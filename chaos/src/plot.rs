//! `history.svg` of a run: every operation's latency over time (answered in blue, unanswered in
//! red at the top), throughput per quarter second as a line, and the faults as shaded bands.

use std::fmt::Write as _;

use crate::history::{FaultStep, History};

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 60.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;

/// One operation on the plot: sent and completed (ns since the run started), and whether it
/// was answered.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    /// When it was sent.
    pub invoke: u64,
    /// When it completed.
    pub complete: u64,
    /// It got an answer.
    pub answered: bool,
}

/// The plot of a KV history as an SVG document.
pub fn svg(history: &History) -> String {
    let points: Vec<Point> = history
        .operations
        .iter()
        .map(|o| Point {
            invoke: o.invoke,
            complete: o.complete,
            answered: o.output.revision().is_some(),
        })
        .collect();
    svg_of(&points, &history.faults)
}

/// The plot of `points` and `faults` as an SVG document.
pub fn svg_of(points: &[Point], faults: &[FaultStep]) -> String {
    let end = points
        .iter()
        .map(|o| o.complete)
        .chain(faults.iter().map(|f| f.at))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        / 1e9;
    let answered = |o: &&Point| o.answered;
    let max_latency = points
        .iter()
        .map(|o| (o.complete - o.invoke.min(o.complete)) as f64 / 1e6)
        .fold(1.0f64, f64::max);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |secs: f64| LEFT + secs / end * plot_w;
    let y = |ms: f64| TOP + plot_h - (ms / max_latency).min(1.0) * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    // Faults: from each injection to its heal (or the end).
    for (i, f) in faults.iter().enumerate() {
        if f.action != "inject" {
            continue;
        }
        let healed = faults[i + 1..]
            .iter()
            .find(|h| h.action == "heal" && h.fault == f.fault)
            .map(|h| h.at as f64 / 1e9)
            .unwrap_or(f.at as f64 / 1e9 + 0.05);
        let (x0, x1) = (x(f.at as f64 / 1e9), x(healed));
        let _ = writeln!(
            s,
            r#"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{plot_h}" fill="orange" fill-opacity="0.25"/><text x="{x0:.1}" y="{:.1}" fill="darkorange">{}</text>"#,
            (x1 - x0).max(1.0),
            TOP - 6.0,
            f.fault
        );
    }
    // Axes and labels.
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="black"/>"#,
        TOP + plot_h,
        LEFT + plot_w,
        TOP + plot_h,
        TOP + plot_h
    );
    for i in 0..=5 {
        let t = end * i as f64 / 5.0;
        let ms = max_latency * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t:.1} s</text><text x="{:.1}" y="{:.1}" text-anchor="end">{ms:.0} ms</text>"#,
            x(t),
            HEIGHT - BOTTOM + 16.0,
            LEFT - 4.0,
            y(ms) + 4.0
        );
    }
    // Latency of every operation, at its completion.
    for o in points {
        let latency = (o.complete - o.invoke.min(o.complete)) as f64 / 1e6;
        let color = if o.answered { "steelblue" } else { "crimson" };
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{color}"/>"#,
            x(o.complete as f64 / 1e9),
            y(latency)
        );
    }
    // Throughput of answered operations per 250 ms, on the right axis.
    let buckets = (end / 0.25).ceil() as usize + 1;
    let mut counts = vec![0usize; buckets];
    for o in points.iter().filter(answered) {
        counts[((o.complete as f64 / 1e9) / 0.25) as usize] += 1;
    }
    let peak = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 4.0;
    let points: Vec<String> = counts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "{:.1},{:.1}",
                x((i as f64 + 0.5) * 0.25),
                TOP + plot_h - (*c as f64 * 4.0 / peak) * plot_h
            )
        })
        .collect();
    let _ = writeln!(
        s,
        r#"<polyline points="{}" fill="none" stroke="seagreen" stroke-width="1.5"/><text x="{:.1}" y="{:.1}" fill="seagreen">{peak:.0} ops/s</text>"#,
        points.join(" "),
        WIDTH - RIGHT + 4.0,
        TOP + 4.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{:.1}">latency per operation (blue: answered, red: no answer), throughput (green), faults (orange)</text>"#,
        HEIGHT - 6.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{FaultStep, Input, Operation, Output};

    #[test]
    fn the_plot_shows_operations_and_faults() {
        let h = History {
            operations: vec![
                Operation {
                    client: 0,
                    txn: None,
                    invoke: 0,
                    complete: 5_000_000,
                    input: Input::Get { key: "a".into() },
                    output: Output::Get {
                        value: None,
                        mod_revision: 0,
                        revision: 1,
                    },
                },
                Operation {
                    client: 1,
                    txn: None,
                    invoke: 1_000_000_000,
                    complete: 3_000_000_000,
                    input: Input::Put {
                        key: "a".into(),
                        value: "x".into(),
                    },
                    output: Output::Unknown {
                        error: "timeout".into(),
                    },
                },
            ],
            faults: vec![
                FaultStep {
                    fault: "kill-leader".into(),
                    action: "inject".into(),
                    detail: String::new(),
                    at: 900_000_000,
                },
                FaultStep {
                    fault: "kill-leader".into(),
                    action: "heal".into(),
                    detail: String::new(),
                    at: 2_000_000_000,
                },
            ],
            ..History::default()
        };
        let svg = svg(&h);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<circle").count(), 2);
        assert_eq!(svg.matches("crimson").count(), 1);
        assert!(svg.contains(">kill-leader</text>"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
