//! Prometheus histograms read from a `/metrics` text page: parsed per label set, differenced
//! between two scrapes, summed over servers, and queried for quantiles the way Prometheus'
//! `histogram_quantile` does (linear interpolation inside the bucket that holds the rank).

use std::collections::BTreeMap;

/// A label set without `le`, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// One histogram: cumulative counts per upper bound (`le`), ascending, `+Inf` last, and the
/// sum of the observations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// (upper bound, cumulative count).
    pub buckets: Vec<(f64, f64)>,
    /// The sum of every observation.
    pub sum: f64,
}

impl Histogram {
    /// Observations in the histogram (the `+Inf` bucket).
    pub fn count(&self) -> f64 {
        self.buckets.last().map(|b| b.1).unwrap_or(0.0)
    }

    /// The `q` quantile in the histogram's unit, or `None` when it holds no observations.
    /// Ranks that fall in the `+Inf` bucket answer the largest finite bound, as Prometheus does.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, cumulative) in &self.buckets {
            if cumulative >= rank && cumulative > below {
                if le.is_infinite() {
                    return Some(lower);
                }
                return Some(lower + (le - lower) * (rank - below) / (cumulative - below));
            }
            lower = le;
            below = cumulative;
        }
        Some(lower)
    }

    /// What was observed between `earlier` and `self` (a later scrape of the same series).
    /// A series whose counts went down was reset (its server restarted): all of it is new.
    pub fn since(&self, earlier: Option<&Histogram>) -> Histogram {
        let Some(earlier) = earlier else {
            return self.clone();
        };
        let reset = earlier.buckets.len() != self.buckets.len()
            || self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .any(|(now, then)| now.0 != then.0 || now.1 < then.1);
        if reset {
            return self.clone();
        }
        Histogram {
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|(now, then)| (now.0, now.1 - then.1))
                .collect(),
            sum: self.sum - earlier.sum,
        }
    }

    /// Adds another histogram with the same bounds (another server's).
    pub fn add(&mut self, other: &Histogram) {
        self.sum += other.sum;
        if self.buckets.is_empty() {
            self.buckets = other.buckets.clone();
            return;
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            mine.1 += theirs.1;
        }
    }
}

/// Every series of one histogram family, by label set.
pub type Family = BTreeMap<Labels, Histogram>;

/// The series of histogram `name` in a Prometheus or OpenMetrics text page.
pub fn parse(text: &str, name: &str) -> anyhow::Result<Family> {
    let (bucket, sum) = (format!("{name}_bucket"), format!("{name}_sum"));
    let mut family = Family::new();
    for line in text.lines() {
        let (is_bucket, rest) = match (line.strip_prefix(&bucket), line.strip_prefix(&sum)) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => continue,
        };
        let (mut labels, rest) = match rest.strip_prefix('{') {
            Some(inner) => {
                parse_labels(inner).map_err(|e| anyhow::anyhow!("{e} in metrics line {line:?}"))?
            }
            None if rest.starts_with(' ') => (Labels::new(), rest),
            // Another metric whose name starts the same.
            None => continue,
        };
        let value: f64 = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no value in metrics line {line:?}"))?;
        if !is_bucket {
            family.entry(labels).or_default().sum = value;
            continue;
        }
        let le = labels
            .remove("le")
            .ok_or_else(|| anyhow::anyhow!("bucket without le in {line:?}"))?;
        let le: f64 = match le.as_str() {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .map_err(|_| anyhow::anyhow!("bad le {v:?} in {line:?}"))?,
        };
        family.entry(labels).or_default().buckets.push((le, value));
    }
    for h in family.values_mut() {
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Ok(family)
}

/// Labels up to the closing `}`, and what follows it.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("a label without '='")?;
        let key = rest[..eq].trim().to_string();
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next().map(|c| c.1) != Some('"') {
            return Err("an unquoted label value".into());
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false;
                }
                (true, c) => {
                    value.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        let end = end.ok_or("an unterminated label value")?;
        labels.insert(key, value);
        rest = &rest[end..];
    }
}

/// What each series observed between two scrapes of the same servers, summed over servers:
/// `before[i]` and `after[i]` are server `i`'s families.
pub fn window(before: &[Family], after: &[Family]) -> Family {
    let mut out = Family::new();
    for (i, later) in after.iter().enumerate() {
        let earlier = before.get(i);
        for (labels, h) in later {
            let delta = h.since(earlier.and_then(|f| f.get(labels)));
            if delta.count() > 0.0 {
                out.entry(labels.clone()).or_default().add(&delta);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP apiserver_request_duration_seconds Response latency.
# TYPE apiserver_request_duration_seconds histogram
apiserver_request_duration_seconds_sum{verb="POST",resource="pods",scope="namespace"} 1.5
apiserver_request_duration_seconds_count{verb="POST",resource="pods",scope="namespace"} 10
apiserver_request_duration_seconds_bucket{verb="POST",resource="pods",scope="namespace",le="0.1"} 4
apiserver_request_duration_seconds_bucket{verb="POST",resource="pods",scope="namespace",le="0.2"} 8
apiserver_request_duration_seconds_bucket{verb="POST",resource="pods",scope="namespace",le="1.0"} 10
apiserver_request_duration_seconds_bucket{verb="POST",resource="pods",scope="namespace",le="+Inf"} 10
apiserver_request_duration_seconds_bucket{verb="GET",resource="a\"b",scope="resource",le="0.1"} 0
apiserver_request_duration_seconds_bucket{verb="GET",resource="a\"b",scope="resource",le="+Inf"} 2
apiserver_request_total{verb="GET",code="200"} 7
"#;

    fn key(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_series_and_interpolates_quantiles() {
        let f = parse(PAGE, "apiserver_request_duration_seconds").unwrap();
        assert_eq!(f.len(), 2);
        let post = &f[&key(&[
            ("verb", "POST"),
            ("resource", "pods"),
            ("scope", "namespace"),
        ])];
        assert_eq!(post.count(), 10.0);
        assert_eq!(post.sum, 1.5);
        // Rank 5 of 10 lies a quarter into (0.1, 0.2].
        assert!((post.quantile(0.5).unwrap() - 0.125).abs() < 1e-9);
        // Rank 9.9 lies 95 % into (0.2, 1.0].
        assert!((post.quantile(0.99).unwrap() - 0.96).abs() < 1e-9);
        // Everything in +Inf: the largest finite bound, as histogram_quantile answers.
        let get = &f[&key(&[("verb", "GET"), ("resource", "a\"b"), ("scope", "resource")])];
        assert_eq!(get.quantile(0.99), Some(0.1));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn windows_difference_scrapes_and_sum_servers() {
        let h = |counts: [f64; 3]| Histogram {
            buckets: vec![
                (0.1, counts[0]),
                (1.0, counts[1]),
                (f64::INFINITY, counts[2]),
            ],
            sum: 0.0,
        };
        let k = key(&[("verb", "PUT")]);
        let before = vec![Family::from([(k.clone(), h([1.0, 2.0, 2.0]))])];
        // Server 0 saw 3 more; server 1 is new; an unchanged series drops out.
        let after = vec![
            Family::from([
                (k.clone(), h([2.0, 5.0, 5.0])),
                (key(&[("verb", "GET")]), h([0.0, 0.0, 0.0])),
            ]),
            Family::from([(k.clone(), h([1.0, 1.0, 1.0]))]),
        ];
        let w = window(&before, &after);
        assert_eq!(w.len(), 1);
        assert_eq!(w[&k], h([2.0, 4.0, 4.0]));
        // A restarted server's counts went down: all of what it has now is new.
        let restarted = vec![Family::from([(k.clone(), h([0.0, 1.0, 1.0]))])];
        assert_eq!(window(&before, &restarted)[&k], h([0.0, 1.0, 1.0]));
    }

    #[test]
    fn unlabelled_histograms_keep_their_sum() {
        let text =
            "x_bucket{le=\"0.1\"} 2\nx_bucket{le=\"+Inf\"} 3\nx_sum 0.5\nx_count 3\nx_summary 9\n";
        let f = parse(text, "x").unwrap();
        let h = &f[&Labels::new()];
        assert_eq!((h.count(), h.sum, h.buckets.len()), (3.0, 0.5, 2));
        let earlier = Histogram {
            buckets: vec![(0.1, 1.0), (f64::INFINITY, 1.0)],
            sum: 0.2,
        };
        let d = h.since(Some(&earlier));
        assert_eq!((d.count(), (d.sum * 10.0).round()), (2.0, 3.0));
    }

    #[test]
    fn malformed_pages_are_errors() {
        for bad in [
            "x_bucket{le=\"0.1\"} nope",
            "x_bucket{le=\"0.1} 3",
            "x_bucket{verb=\"GET\"} 3",
            "x_bucket{le=\"fast\"} 3",
        ] {
            assert!(parse(bad, "x").is_err(), "{bad}");
        }
    }
}
