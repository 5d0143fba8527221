//! `cargo xtask boundaries`: the rules that keep modules apart, checked on the source tree.
//! Extraction runs the same checks for the module it moves out.
//!
//! 1. Code: a module crate depends on shared crates only (from `cargo metadata`, every
//!    dependency kind).
//! 2. Code: a module's source does not name another module's crate, its HTTP routes, or its
//!    schema in SQL.
//! 3. SQL: a module's migrations do not name another module's schema (no cross-schema
//!    foreign keys). The database-level proof runs in the tests (`app/tests/it/basics.rs`).
//!
//! Event subscriptions are not dependencies of this kind: two modules exchanging events
//! both ways is the design, not a cycle.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// One broken rule, with where it is broken and where the rule is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    pub(crate) module: String,
    pub(crate) rule: &'static str,
    pub(crate) place: String,
    pub(crate) detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} — {} (rule: {}; see ARCHITECTURE.md, Invariants)",
            self.place, self.detail, self.module, self.rule
        )
    }
}

pub(crate) const RULE_CRATES: &str = "a module crate depends only on shared crates";
pub(crate) const RULE_SOURCE: &str = "a module never names another module's code, routes or schema";
pub(crate) const RULE_SQL: &str = "a module's migrations name only its own schema";

/// The modules of the workspace at `root`, in name order.
pub(crate) fn modules(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root.join("modules")).context("no modules/ folder")? {
        let entry = entry?;
        if entry.path().join("Cargo.toml").is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Every violation of the rules by `module`.
pub(crate) fn check_module(root: &Path, module: &str) -> anyhow::Result<Vec<Violation>> {
    let all = modules(root)?;
    let others: Vec<&str> = all
        .iter()
        .map(String::as_str)
        .filter(|m| *m != module)
        .collect();
    let mut found = Vec::new();
    found.extend(check_crate_deps(root, module, &others)?);
    found.extend(check_source(root, module, &others)?);
    found.extend(check_migrations(root, module, &others)?);
    Ok(found)
}

fn check_crate_deps(root: &Path, module: &str, others: &[&str]) -> anyhow::Result<Vec<Violation>> {
    let output =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root)
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--offline",
            ])
            .output()
            .context("cargo metadata")?;
    anyhow::ensure!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let mut found = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        if package["name"] != module {
            continue;
        }
        for dep in package["dependencies"].as_array().into_iter().flatten() {
            let name = dep["name"].as_str().unwrap_or("");
            if others.contains(&name) {
                found.push(Violation {
                    module: module.to_owned(),
                    rule: RULE_CRATES,
                    place: format!("modules/{module}/Cargo.toml"),
                    detail: format!("depends on module {name}"),
                });
            }
        }
    }
    Ok(found)
}

pub(crate) fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The code of a line without its `//` comment (a `//` inside a string is kept).
pub(crate) fn code_of(line: &str) -> &str {
    let mut in_string = false;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '"' if previous != '\\' => in_string = !in_string,
            '/' if !in_string && previous == '/' => return &line[..i - 1],
            _ => {}
        }
        previous = c;
    }
    line
}

/// The contents of the string literals of a line of code.
fn strings_of(code: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = None;
    let mut previous = ' ';
    for (i, c) in code.char_indices() {
        if c == '"' && previous != '\\' {
            match start {
                None => start = Some(i + 1),
                Some(s) => {
                    out.push(&code[s..i]);
                    start = None;
                }
            }
        }
        previous = c;
    }
    out
}

/// `other::...` as the start of a path (the crate), not `contracts::other::...` (the
/// shared contracts of its events, which every module may use).
pub(crate) fn names_crate(code: &str, other: &str) -> bool {
    let needle = format!("{other}::");
    let mut from = 0;
    while let Some(at) = code[from..].find(&needle) {
        let at = from + at;
        let before = &code[..at];
        let starts_path = !before.ends_with("::")
            && before
                .chars()
                .last()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        if starts_path {
            return true;
        }
        from = at + needle.len();
    }
    false
}

/// `other.` followed by a table name, not an event type (`other.fact.v1`).
fn names_schema(text: &str, other: &str) -> bool {
    let needle = format!("{other}.");
    let mut rest = text;
    while let Some(at) = rest.find(&needle) {
        let before_ok = rest[..at]
            .chars()
            .last()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let after = &rest[at + needle.len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let event_type = after[name.len()..].starts_with(".v");
        if before_ok && !name.is_empty() && !event_type {
            return true;
        }
        rest = &rest[at + needle.len()..];
    }
    false
}

fn check_source(root: &Path, module: &str, others: &[&str]) -> anyhow::Result<Vec<Violation>> {
    let mut found = Vec::new();
    let base = root.join("modules").join(module);
    for file in rust_files(&base.join("src"))
        .into_iter()
        .chain(rust_files(&base.join("tests")))
    {
        let text = std::fs::read_to_string(&file)?;
        let place = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for (n, line) in text.lines().enumerate() {
            let code = code_of(line);
            for other in others {
                let detail = if names_crate(code, other) {
                    Some(format!("uses the code of module {other}"))
                } else if strings_of(code)
                    .iter()
                    .any(|s| s.contains(&format!("/api/{other}/")))
                {
                    Some(format!("calls module {other} over HTTP"))
                } else if strings_of(code).iter().any(|s| names_schema(s, other)) {
                    Some(format!("names schema {other} in SQL"))
                } else {
                    None
                };
                if let Some(detail) = detail {
                    found.push(Violation {
                        module: module.to_owned(),
                        rule: RULE_SOURCE,
                        place: format!("{place}:{}", n + 1),
                        detail,
                    });
                }
            }
        }
    }
    Ok(found)
}

fn check_migrations(root: &Path, module: &str, others: &[&str]) -> anyhow::Result<Vec<Violation>> {
    let mut found = Vec::new();
    for file in rust_files(&root.join("modules").join(module).join("src/db/migrations")) {
        let text = std::fs::read_to_string(&file)?;
        let place = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for (n, line) in text.lines().enumerate() {
            let code = code_of(line);
            for other in others {
                let quoted = strings_of(code)
                    .iter()
                    .any(|s| *s == *other || names_schema(s, other));
                if quoted || code.contains(&format!("Alias::new(\"{other}\")")) {
                    found.push(Violation {
                        module: module.to_owned(),
                        rule: RULE_SQL,
                        place: format!("{place}:{}", n + 1),
                        detail: format!("names schema {other} (a foreign key across schemas?)"),
                    });
                }
            }
        }
    }
    Ok(found)
}

/// `cargo xtask boundaries`.
pub(crate) fn run(root: &Path) -> anyhow::Result<()> {
    let mut all = Vec::new();
    for module in modules(root)? {
        let found = check_module(root, &module)?;
        if found.is_empty() {
            eprintln!("ok    {module}");
        }
        all.extend(found);
    }
    let layers = crate::tidy::check(root)?;
    if layers.is_empty() {
        eprintln!(
            "ok    layer and file rules ({} rules)",
            crate::tidy::LAYER_RULES.len() + crate::tidy::CODE_RULES.len() + 2
        );
    }
    all.extend(layers);
    for v in &all {
        eprintln!("FAIL  {v}");
    }
    anyhow::ensure!(all.is_empty(), "{} boundary violation(s)", all.len());
    if refresh_map(root)? {
        eprintln!("wrote {MAP_FILE}");
    } else {
        eprintln!("ok    {MAP_FILE} is current");
    }
    eprintln!("\n{}", map(root)?);
    Ok(())
}

/// Writes [`MAP_FILE`] if it is not what the tree says (extract and inline call it too);
/// returns whether it wrote.
pub(crate) fn refresh_map(root: &Path) -> anyhow::Result<bool> {
    let document = map_document(root)?;
    let path = root.join(MAP_FILE);
    if std::fs::read_to_string(&path).ok().as_deref() == Some(document.as_str()) {
        return Ok(false);
    }
    std::fs::create_dir_all(path.parent().expect("docs/"))?;
    std::fs::write(&path, &document).with_context(|| format!("writing {MAP_FILE}"))?;
    Ok(true)
}

/// Where `cargo xtask boundaries` writes the module map; a test fails when it is stale.
pub(crate) const MAP_FILE: &str = "docs/module-map.md";

/// The module map as the document kept in [`MAP_FILE`].
pub(crate) fn map_document(root: &Path) -> anyhow::Result<String> {
    Ok(format!(
        "# Module map\n\n\
         Generated by `cargo xtask boundaries` from the module crates and the contracts' \
         subscription table (`shared/contracts/src/registry.rs`); do not edit it by hand. \
         A test (`the_module_map_in_docs_is_current`) fails when it is stale.\n\n\
         Each module owns the database schema of its name and runs in the monolith, or as \
         a service of its own once extracted; an arrow is an event one module publishes \
         and the other consumes.\n\n{}",
        map(root)?
    ))
}

/// The module map as Mermaid: modules, their schemas, and the events between them.
pub(crate) fn map(root: &Path) -> anyhow::Result<String> {
    let mut out = String::from("```mermaid\nflowchart LR\n");
    for module in modules(root)? {
        let extracted = root.join("services").join(&module).is_dir();
        let place = if extracted { "service" } else { "monolith" };
        out.push_str(&format!(
            "    {module}[\"{module}<br/>schema {module}<br/>{place}\"]\n"
        ));
    }
    let mut edges = std::collections::BTreeMap::<(String, String), Vec<String>>::new();
    for s in contracts_subscriptions(root)? {
        edges.entry((s.0, s.1)).or_default().push(s.2);
    }
    for ((from, to), events) in edges {
        out.push_str(&format!(
            "    {from} -- \"{}\" --> {to}\n",
            events.join("<br/>")
        ));
    }
    out.push_str("```\n");
    Ok(out)
}

/// (producer, consumer, event) from the contracts' subscription table.
fn contracts_subscriptions(root: &Path) -> anyhow::Result<Vec<(String, String, String)>> {
    let registry = std::fs::read_to_string(root.join("shared/contracts/src/registry.rs"))?;
    let mut out = Vec::new();
    for line in registry.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("sub(\"") else {
            continue;
        };
        let Some((consumer, rest)) = rest.split_once("\", ") else {
            continue;
        };
        let path = rest.trim_end_matches("),").trim_end_matches("::TYPE");
        let Some((producer, ty)) = path.split_once("::") else {
            continue;
        };
        out.push((producer.to_owned(), consumer.to_owned(), ty.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every source file the documents name in backticks exists (a path may be given from
    /// any folder down, `tests/bus/main.rs`), and every `file.rs::name` names something in
    /// that file: a doc that points to a test that was renamed or moved fails here.
    #[test]
    fn every_file_and_test_the_documents_name_exists() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace root");
        let sources: Vec<PathBuf> = ["app", "shared", "modules", "xtask"]
            .iter()
            .flat_map(|dir| rust_files(&root.join(dir)))
            .collect();
        let mut documents = vec![root.join("ARCHITECTURE.md"), root.join("README.md")];
        documents.extend(
            std::fs::read_dir(root.join("docs"))
                .expect("docs/")
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "md")),
        );
        let mut problems = Vec::new();
        let mut named = 0;
        for document in &documents {
            let text = std::fs::read_to_string(document).expect("a document");
            let spans = text.split('`').skip(1).step_by(2);
            for span in spans {
                let (file, item) = span.split_once("::").unwrap_or((span, ""));
                let plain = |c: char| c.is_ascii_alphanumeric() || "_/.-".contains(c);
                if !file.ends_with(".rs") || !file.chars().all(plain) {
                    continue;
                }
                named += 1;
                let suffix = format!("/{}", file.trim_start_matches('/'));
                let found: Vec<&PathBuf> = sources
                    .iter()
                    .filter(|p| p.to_string_lossy().ends_with(&suffix))
                    .collect();
                let where_ = document.strip_prefix(root).unwrap_or(document).display();
                if found.is_empty() {
                    problems.push(format!("{where_}: `{span}`: no file ends with {file}"));
                    continue;
                }
                let item = item.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
                let Some(item) = item.into_iter().next().filter(|i| !i.is_empty()) else {
                    continue;
                };
                let has = |path: &&PathBuf| {
                    let code = std::fs::read_to_string(path).unwrap_or_default();
                    code.match_indices(item).any(|(i, _)| {
                        let word = |c: Option<char>| {
                            c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                        };
                        !word(code[..i].chars().next_back())
                            && !word(code[i + item.len()..].chars().next())
                    })
                };
                if !found.iter().any(has) {
                    problems.push(format!("{where_}: `{span}`: {file} has no {item}"));
                }
            }
        }
        assert!(
            named > 20,
            "only {named} source files named: is the parsing right?"
        );
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn the_module_map_in_docs_is_current() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace root");
        let kept = std::fs::read_to_string(root.join(MAP_FILE)).unwrap_or_default();
        let now = map_document(root).expect("the map");
        assert!(
            kept == now,
            "{MAP_FILE} is stale (or missing): run `cargo xtask boundaries`\n--- kept\n{kept}\n--- now\n{now}"
        );
    }

    #[test]
    fn comments_are_not_code() {
        assert_eq!(code_of("let a = 1; // checkout::x"), "let a = 1; ");
        assert_eq!(
            code_of("let url = \"http://x\"; // y"),
            "let url = \"http://x\"; "
        );
    }

    #[test]
    fn schema_names_in_sql_are_found_but_event_types_are_not() {
        assert!(names_schema("SELECT * FROM checkout.orders", "checkout"));
        assert!(!names_schema("checkout.order_placed.v1", "checkout"));
        assert!(!names_schema("mycheckout.orders", "checkout"));
        assert!(!names_schema("checkout", "checkout"));
    }

    #[test]
    fn crate_paths_are_told_from_contract_paths() {
        assert!(names_crate("use checkout::Checkout;", "checkout"));
        assert!(names_crate("let x = checkout::NAME;", "checkout"));
        assert!(!names_crate(
            "use contracts::checkout::OrderPlacedV1;",
            "checkout"
        ));
        assert!(!names_crate("use mycheckout::X;", "checkout"));
    }

    #[test]
    fn string_literals_are_found() {
        assert_eq!(strings_of(r#"a("x", "y\"z")"#), vec!["x", r#"y\"z"#]);
    }
}
