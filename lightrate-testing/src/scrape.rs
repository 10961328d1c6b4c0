//! [`Scrape`]: Prometheus text, read by a real Prometheus text parser (`prometheus-parse`).

use std::collections::BTreeMap;

/// A scrape in the Prometheus text format, parsed: each sample by name and labels.
#[derive(Debug)]
pub struct Scrape {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// Parses `text`; panics on text the parser refuses.
    pub fn parse(text: &str) -> Scrape {
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        let parsed = prometheus_parse::Scrape::parse(lines)
            .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{text}"));
        let samples = parsed
            .samples
            .into_iter()
            .filter_map(|sample| {
                let value = match sample.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => return None,
                };
                let labels = sample
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                Some((sample.metric, labels, value))
            })
            .collect();
        Scrape { samples }
    }

    /// The value of the sample `name` whose labels are exactly `labels` (an empty value
    /// stands for a label that is absent or empty), if there is one.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(metric, have, _)| {
                metric == name
                    && labels
                        .iter()
                        .all(|(k, v)| have.get(*k).map_or("", String::as_str) == *v)
                    && have
                        .iter()
                        .all(|(k, v)| v.is_empty() || labels.iter().any(|(l, _)| l == k))
            })
            .map(|(_, _, value)| *value)
    }

    /// [`get`](Self::get) as a whole count, 0 when the sample is absent.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.get(name, labels).map_or(0, |v| v as u64)
    }

    /// The samples named `name`, with their labels (for messages).
    pub fn all(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|(metric, _, _)| metric == name)
            .map(|(_, labels, value)| (labels.clone(), *value))
            .collect()
    }
}
