//! What a long command says while it runs: one numbered line per step on stderr, with its
//! counts (plain lines, never a terminal's progress bar, so that a log or CI keeps them
//! readable), and, at the end, what to do next.

use std::fmt::Display;
use std::time::Instant;

/// The steps of one command: `[extract 2/4] generating services/fulfillment/ (11 files)`.
pub(crate) struct Steps {
    command: &'static str,
    total: usize,
    done: usize,
    started: Instant,
}

impl Steps {
    pub(crate) fn new(command: &'static str, total: usize) -> Self {
        Self {
            command,
            total,
            done: 0,
            started: Instant::now(),
        }
    }

    /// Announces the next step.
    pub(crate) fn step(&mut self, what: impl Display) {
        self.done += 1;
        eprintln!(
            "[{} {}/{} +{:.1}s] {what}",
            self.command,
            self.done.min(self.total),
            self.total,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// A line of the current step, indented under it.
    pub(crate) fn detail(&self, what: impl Display) {
        eprintln!("    {what}");
    }
}

/// The closing block: `Next:` and one line per thing to do, in order.
pub(crate) fn next(lines: &[String]) {
    eprintln!("\nNext:");
    for (i, line) in lines.iter().enumerate() {
        eprintln!("  {}. {line}", i + 1);
    }
}
