//! `/metrics` read back: the Prometheus text format parsed into samples, and the checks
//! the metrics tests make on them (of the monolith, and of an extracted service).

use std::collections::BTreeMap;

/// One line of the text format: `name{label="value",...} value`.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a scrape; panics on a line that is not `series value`.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').expect("key=value");
                    (key.to_owned(), value.trim_matches('"').to_owned())
                })
                .collect();
            Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().unwrap_or_else(|_| panic!("a number: {line}")),
            }
        })
        .collect()
}

/// The value of the first series of `name` whose labels include `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// Panics unless a series of `name` with `labels` is there with at least `min`.
#[track_caller]
pub fn at_least(samples: &[Sample], name: &str, labels: &[(&str, &str)], min: f64) {
    let found = value(samples, name, labels);
    assert!(
        found.is_some_and(|v| v >= min),
        "{name}{labels:?} should be at least {min}, is {found:?}"
    );
}
