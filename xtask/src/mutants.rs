//! `cargo xtask mutants`: applies each named mutation of `xtask/mutations.toml` to a
//! scratch copy of the workspace, one at a time, runs the tests that must kill it, and
//! reports which were killed and which survived.
//!
//! A row names what it breaks (a guarantee of `docs/guarantees.md`), the file, the exact source
//! snippet and its replacement, and the test commands that must fail once it is applied.
//! A snippet that is not found exactly once is an error: the code moved, and the row must
//! follow it (`cargo test -p xtask` checks every row against the tree without building).
//!
//! The scratch copy and its target directory are kept between runs, under
//! `$CARGO_TARGET_DIR/mutants/`, and synced file by file, so a run rebuilds only the
//! crates a mutation touches (the first run builds the dependencies once).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;

/// Where the table lives, from the workspace root.
pub const TABLE: &str = "xtask/mutations.toml";

/// Each test command of a row gets this long before the harness gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(clap::Args)]
pub struct Args {
    /// Run only these mutations (by name; repeat the flag for several).
    #[arg(long)]
    only: Vec<String>,
    /// Run this many mutations, chosen by rotating through the table with the seed.
    #[arg(long)]
    sample: Option<usize>,
    /// The seed of `--sample` (default: the number of days since 1970, so CI covers the
    /// whole table over successive days).
    #[arg(long)]
    seed: Option<u64>,
    /// Only check that every snippet is found exactly once; build and run nothing.
    #[arg(long)]
    check: bool,
    /// Print the table and exit.
    #[arg(long)]
    list: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    mutation: Vec<Mutation>,
}

/// One row of the table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mutation {
    pub name: String,
    /// The guarantee it breaks, in a sentence.
    pub breaks: String,
    pub file: String,
    pub find: String,
    pub replace: String,
    /// `cargo test` arguments (`-p crate --test target name_filter`), tried in order; the
    /// first that fails kills the mutation.
    pub killed_by: Vec<String>,
}

/// Reads the table from a workspace.
pub fn load(root: &Path) -> anyhow::Result<Vec<Mutation>> {
    let text =
        std::fs::read_to_string(root.join(TABLE)).with_context(|| format!("reading {TABLE}"))?;
    let table: Table = toml::from_str(&text).with_context(|| format!("parsing {TABLE}"))?;
    let mut names = std::collections::HashSet::new();
    for m in &table.mutation {
        anyhow::ensure!(names.insert(&m.name), "{TABLE}: {} appears twice", m.name);
        anyhow::ensure!(
            !m.killed_by.is_empty(),
            "{TABLE}: {} names no test that kills it",
            m.name
        );
        anyhow::ensure!(m.find != m.replace, "{TABLE}: {} changes nothing", m.name);
    }
    Ok(table.mutation)
}

/// What is wrong with a row against the tree at `root`, if anything: its file is missing,
/// or its snippet is not found exactly once.
pub fn snippet_problem(root: &Path, m: &Mutation) -> Option<String> {
    let text = match std::fs::read_to_string(root.join(&m.file)) {
        Ok(t) => t,
        Err(e) => return Some(format!("{}: {e}", m.file)),
    };
    match text.matches(m.find.as_str()).count() {
        1 => None,
        0 => Some(format!("snippet not found in {}", m.file)),
        n => Some(format!("snippet found {n} times in {}", m.file)),
    }
}

/// `n` distinct rows out of `len`, consecutive from an offset the seed moves by `n`, so
/// successive seeds walk the whole table.
pub fn sample(len: usize, n: usize, seed: u64) -> Vec<usize> {
    if len == 0 {
        return Vec::new();
    }
    let n = n.min(len);
    let start = (seed as usize).wrapping_mul(n) % len;
    (0..n).map(|i| (start + i) % len).collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Killed(String),
    Survived,
    /// The snippet is not found exactly once.
    Missing(String),
    /// The mutated workspace does not build: the row is wrong, not the tests.
    Unviable,
    /// A test command matched no test, or failed without a failed test: the row is wrong.
    Broken(String),
}

pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    let table = load(root)?;
    if args.list {
        for m in &table {
            eprintln!(
                "{:<34} {}\n{:<34} killed by: {}",
                m.name,
                m.breaks,
                "",
                m.killed_by.join(" | ")
            );
        }
        return Ok(());
    }
    for name in &args.only {
        anyhow::ensure!(
            table.iter().any(|m| &m.name == name),
            "no mutation named {name} in {TABLE}"
        );
    }
    let chosen: Vec<&Mutation> = if !args.only.is_empty() {
        table
            .iter()
            .filter(|m| args.only.contains(&m.name))
            .collect()
    } else if let Some(n) = args.sample {
        let seed = args.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() / 86_400)
                .unwrap_or(0)
        });
        let picked: Vec<&Mutation> = sample(table.len(), n, seed)
            .into_iter()
            .map(|i| &table[i])
            .collect();
        eprintln!(
            "mutants: sample of {} with seed {seed} (--seed {seed} repeats it): {}",
            picked.len(),
            picked
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        picked
    } else {
        table.iter().collect()
    };

    // Every row is checked against the tree, whichever run: drift shows at once.
    let missing: Vec<(&str, String)> = table
        .iter()
        .filter_map(|m| snippet_problem(root, m).map(|p| (m.name.as_str(), p)))
        .collect();
    if args.check {
        for m in &table {
            let problem = missing.iter().find(|(n, _)| *n == m.name);
            eprintln!(
                "{:<34} {}",
                m.name,
                problem.map_or("found once".to_owned(), |(_, p)| p.clone())
            );
        }
        if !missing.is_empty() {
            bail!(
                "{} snippet(s) of {TABLE} not found exactly once",
                missing.len()
            );
        }
        return Ok(());
    }

    let base = crate::harness::target_dir().join("mutants");
    let workspace = base.join("workspace");
    let target = base.join("target");
    let logs = base.join("logs");
    std::fs::create_dir_all(&workspace)?;
    std::fs::create_dir_all(&logs)?;
    crate::scratch::sync_workspace(root, &workspace)?;
    eprintln!(
        "mutants: scratch copy {}, target {}, logs {}",
        workspace.display(),
        target.display(),
        logs.display()
    );

    let mut results = Vec::new();
    for m in &chosen {
        let started = Instant::now();
        let verdict = match missing.iter().find(|(n, _)| *n == m.name) {
            Some((_, problem)) => Verdict::Missing(problem.clone()),
            None => try_mutation(&workspace, &target, &logs, m)?,
        };
        let took = started.elapsed();
        eprintln!(
            "mutants: {:<34} {:<10} in {:>4}s",
            m.name,
            label(&verdict),
            took.as_secs()
        );
        results.push((*m, verdict, took));
    }

    eprintln!();
    eprintln!("| mutation | breaks | result | killed by | time |");
    eprintln!("| --- | --- | --- | --- | --- |");
    for (m, verdict, took) in &results {
        let detail = match verdict {
            Verdict::Killed(test) => format!("`{test}`"),
            Verdict::Missing(problem) => problem.clone(),
            Verdict::Survived => format!("none of: {}", m.killed_by.join("; ")),
            Verdict::Unviable => format!(
                "does not build (log: {})",
                logs.join(format!("{}.log", m.name)).display()
            ),
            Verdict::Broken(problem) => format!(
                "{problem} (log: {})",
                logs.join(format!("{}.log", m.name)).display()
            ),
        };
        eprintln!(
            "| {} | {} | {} | {} | {} s |",
            m.name,
            m.breaks,
            label(verdict),
            detail,
            took.as_secs()
        );
    }
    let bad: Vec<&str> = results
        .iter()
        .filter(|(_, v, _)| !matches!(v, Verdict::Killed(_)))
        .map(|(m, _, _)| m.name.as_str())
        .collect();
    let drift: Vec<&str> = missing
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !bad.contains(n))
        .collect();
    if !bad.is_empty() || !drift.is_empty() {
        bail!(
            "not killed: {}{}",
            bad.join(", "),
            if drift.is_empty() {
                String::new()
            } else {
                format!("; snippets not found exactly once: {}", drift.join(", "))
            }
        );
    }
    eprintln!("mutants: all {} killed", results.len());
    Ok(())
}

fn label(v: &Verdict) -> &'static str {
    match v {
        Verdict::Killed(_) => "killed",
        Verdict::Survived => "SURVIVED",
        Verdict::Missing(_) => "MISSING",
        Verdict::Unviable => "UNVIABLE",
        Verdict::Broken(_) => "BROKEN",
    }
}

/// Applies `m` in the scratch copy, builds, runs its tests, and puts the file back (with a
/// new modification time, so the next build compiles the original again).
fn try_mutation(
    workspace: &Path,
    target: &Path,
    logs: &Path,
    m: &Mutation,
) -> anyhow::Result<Verdict> {
    let path = workspace.join(&m.file);
    let original = std::fs::read_to_string(&path).with_context(|| m.file.clone())?;
    let mutated = original.replacen(&m.find, &m.replace, 1);
    std::fs::write(&path, &mutated)?;
    let log_path = logs.join(format!("{}.log", m.name));
    let verdict = run_tests(workspace, target, &log_path, m);
    std::fs::write(&path, &original)?;
    verdict
}

fn run_tests(
    workspace: &Path,
    target: &Path,
    log_path: &Path,
    m: &Mutation,
) -> anyhow::Result<Verdict> {
    let log = std::fs::File::create(log_path)?;
    for test in &m.killed_by {
        let (cargo_args, filter) = split_test(test)?;
        // Build first: a mutation that does not compile kills nothing.
        let mut build = cargo(workspace, target);
        build
            .args(["test", "--locked", "--no-run"])
            .args(&cargo_args);
        if !run_logged(build, &log, log_path, Duration::from_secs(1800))?.success {
            return Ok(Verdict::Unviable);
        }
        let mut tests = cargo(workspace, target);
        tests.args(["test", "--locked"]).args(&cargo_args).arg("--");
        tests.args(&filter);
        let outcome = run_logged(tests, &log, log_path, COMMAND_TIMEOUT)?;
        if outcome.timed_out {
            return Ok(Verdict::Killed(format!("{test} (timed out)")));
        }
        if !outcome.success {
            if !outcome.output.contains("test result: FAILED") {
                return Ok(Verdict::Broken(format!(
                    "`{test}` failed without a failed test"
                )));
            }
            return Ok(Verdict::Killed(test.clone()));
        }
        if outcome.output.contains("test result: ok. 0 passed") {
            return Ok(Verdict::Broken(format!("`{test}` matched no test")));
        }
    }
    Ok(Verdict::Survived)
}

/// Splits `-p crate --test target filter...` into cargo's arguments and the test
/// binary's (everything after the target's name).
fn split_test(test: &str) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let words: Vec<String> = test.split_whitespace().map(str::to_owned).collect();
    let at = words
        .iter()
        .position(|w| w == "--test" || w == "--lib")
        .with_context(|| format!("`{test}` names no --test target nor --lib"))?;
    let end = if words[at] == "--test" {
        at + 2
    } else {
        at + 1
    };
    anyhow::ensure!(words.len() >= end, "`{test}` names no target after --test");
    Ok((words[..end].to_vec(), words[end..].to_vec()))
}

fn cargo(workspace: &Path, target: &Path) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", target)
        .env("CARGO_TERM_COLOR", "never")
        .stdin(Stdio::null());
    command
}

struct Outcome {
    success: bool,
    timed_out: bool,
    /// What the command wrote.
    output: String,
}

fn run_logged(
    mut command: Command,
    log: &std::fs::File,
    log_path: &Path,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    use std::io::Write;
    let mut log = log.try_clone()?;
    writeln!(log, "$ {command:?}")?;
    let from = std::fs::metadata(log_path)?.len() as usize;
    let mut child = command
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .spawn()
        .context("starting cargo")?;
    let deadline = Instant::now() + timeout;
    let (success, timed_out) = loop {
        if let Some(status) = child.try_wait()? {
            break (status.success(), false);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            writeln!(log, "(timed out after {}s)", timeout.as_secs())?;
            break (false, true);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read(log_path)?;
    Ok(Outcome {
        success,
        timed_out,
        output: String::from_utf8_lossy(text.get(from..).unwrap_or_default()).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row's snippet is found exactly once in this tree, so a change that moves the
    /// code shows here, without building any mutant.
    #[test]
    fn every_snippet_of_the_table_is_found_exactly_once() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace root");
        let table = load(root).expect("the table loads");
        assert!(table.len() >= 14, "the table lost rows: {}", table.len());
        let problems: Vec<String> = table
            .iter()
            .filter_map(|m| snippet_problem(root, m).map(|p| format!("{}: {p}", m.name)))
            .collect();
        assert!(problems.is_empty(), "{TABLE}: {problems:#?}");
    }

    #[test]
    fn a_sample_walks_the_whole_table_over_successive_seeds() {
        let mut seen = std::collections::HashSet::new();
        for seed in 0..8 {
            let picked = sample(15, 2, seed);
            assert_eq!(picked.len(), 2);
            assert_ne!(picked[0], picked[1]);
            seen.extend(picked);
        }
        assert_eq!(seen.len(), 15);
    }

    #[test]
    fn a_test_command_splits_into_cargo_s_arguments_and_the_filter() {
        let (cargo, filter) =
            split_test("-p messaging --test bus crash_inside_the_handler::local_postgres")
                .expect("splits");
        assert_eq!(cargo, ["-p", "messaging", "--test", "bus"]);
        assert_eq!(filter, ["crash_inside_the_handler::local_postgres"]);
        assert!(split_test("-p messaging some_name").is_err());
    }
}
