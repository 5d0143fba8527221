//! The rules inside a module and the house rules of every source file, written as tables:
//! one row per rule, each naming what it forbids and where, so a rule is dropped only by
//! deleting its row, in plain sight. `cargo xtask boundaries` checks them with the
//! cross-module rules, and a test checks the workspace on every `cargo test`; there is no
//! list of tolerated violations.

use std::path::Path;

use crate::boundaries::{Violation, code_of, names_crate, rust_files};

/// Where in a module's `src/` a layer rule applies.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope {
    /// The module's domain (`domain.rs` or `domain/`).
    Domain,
    /// Every file of the module outside this folder of `src/`.
    Outside(&'static str),
}

/// A layer rule: code in `scope` names none of `forbidden`. An entry with `::` is matched
/// as written (`Utc::now`); one without is a crate, matched as the start of a path
/// (`fastrand::usize`, `use tokio::sync`).
#[derive(Debug)]
pub(crate) struct LayerRule {
    pub(crate) name: &'static str,
    pub(crate) scope: Scope,
    pub(crate) forbidden: &'static [&'static str],
}

/// The layers of a module. The domain holds its rules as pure functions and types: no
/// storage, no network, no clock, no randomness (the caller passes what it needs), so
/// every rule is table-tested without a database. HTTP is the only layer that knows
/// actix-web. `db/` is the only layer that builds statements: use cases and handlers call
/// its functions and hold a transaction (messaging's publishing `Tx`, or the handle `db/`
/// re-exports), nothing more.
pub(crate) const LAYER_RULES: &[LayerRule] = &[
    LayerRule {
        name: "the domain does no IO, reads no clock and draws no random number",
        scope: Scope::Domain,
        forbidden: &[
            "sea_orm",
            "sqlx",
            "actix_web",
            "reqwest",
            "redis",
            "tokio",
            "messaging",
            "runtime",
            "fastrand",
            "rand",
            "std::fs",
            "std::net",
            "std::env",
            "SystemTime::now",
            "Instant::now",
            "Utc::now",
            "Local::now",
            "Uuid::now_v7",
            "Uuid::new_v4",
        ],
    },
    LayerRule {
        name: "only a module's http/ layer knows actix-web",
        scope: Scope::Outside("http"),
        forbidden: &["actix_web"],
    },
    LayerRule {
        name: "only a module's db/ layer knows sea-orm, sqlx and messaging's SQL helpers",
        scope: Scope::Outside("db"),
        forbidden: &["sea_orm", "sqlx", "messaging::db"],
    },
];

/// The rule every source file keeps.
pub(crate) const RULE_FILE_DOC: &str =
    "every source file opens with a `//!` line saying what it is";

/// A rule of every source file: code names none of `forbidden` (matched as written),
/// except in the files of `except` (paths from the workspace root).
#[derive(Debug)]
pub(crate) struct CodeRule {
    pub(crate) name: &'static str,
    pub(crate) forbidden: &'static [&'static str],
    pub(crate) except: &'static [&'static str],
}

/// reqwest is built without a TLS provider of its own (no aws-lc-rs), so a client built the
/// default way panics when built; `runtime::tls` hands each one rustls on ring.
pub(crate) const CODE_RULES: &[CodeRule] = &[CodeRule {
    name: "every HTTP client is built by runtime::tls",
    forbidden: &["Client::new()", "Client::builder()"],
    // The rule's own table, and its test, name what it forbids.
    except: &["shared/runtime/src/tls.rs", "xtask/src/tidy.rs"],
}];

/// The folders of the workspace whose Rust files keep the house rules.
const SOURCE_ROOTS: &[&str] = &[
    "app",
    "shared",
    "modules",
    "migrations",
    "xtask",
    "services",
];

/// Every violation of the tables in the workspace at `root`.
pub(crate) fn check(root: &Path) -> anyhow::Result<Vec<Violation>> {
    let mut found = Vec::new();
    for folder in SOURCE_ROOTS {
        for file in rust_files(&root.join(folder)) {
            let text = std::fs::read_to_string(&file)?;
            let place = relative(root, &file);
            if !text.starts_with("//!") {
                found.push(Violation {
                    module: folder.to_string(),
                    rule: RULE_FILE_DOC,
                    place: format!("{place}:1"),
                    detail: "the file does not open with a `//!` line".into(),
                });
            }
            for rule in CODE_RULES {
                if rule.except.contains(&place.as_str()) {
                    continue;
                }
                for (n, line) in text.lines().enumerate() {
                    let code = code_of(line);
                    for item in rule.forbidden.iter().filter(|item| code.contains(*item)) {
                        found.push(Violation {
                            module: folder.to_string(),
                            rule: rule.name,
                            place: format!("{place}:{}", n + 1),
                            detail: format!("names {item}"),
                        });
                    }
                }
            }
        }
    }
    for module in crate::boundaries::modules(root)? {
        let src = root.join("modules").join(&module).join("src");
        for file in rust_files(&src) {
            let inside = file.strip_prefix(&src).unwrap_or(&file);
            let first = inside
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&file)?;
            for rule in LAYER_RULES {
                let applies = match rule.scope {
                    Scope::Domain => first == "domain" || first == "domain.rs",
                    Scope::Outside(folder) => first != folder,
                };
                if !applies {
                    continue;
                }
                for (n, line) in text.lines().enumerate() {
                    let code = code_of(line);
                    if code.trim_start().starts_with("//") {
                        continue;
                    }
                    for item in rule.forbidden {
                        if names(code, item) {
                            found.push(Violation {
                                module: module.clone(),
                                rule: rule.name,
                                place: format!("{}:{}", relative(root, &file), n + 1),
                                detail: format!("names {item}"),
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(found)
}

fn names(code: &str, item: &str) -> bool {
    if item.contains("::") {
        code.contains(item)
    } else {
        names_crate(code, item)
    }
}

fn relative(root: &Path, file: &Path) -> String {
    file.strip_prefix(root)
        .unwrap_or(file)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace")
            .to_owned()
    }

    /// A workspace with one module, `demo`, holding `files` (path under `src/`, text).
    fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("modules/demo/src");
        std::fs::create_dir_all(&src).expect("src");
        std::fs::write(dir.path().join("modules/demo/Cargo.toml"), "[package]\n").expect("toml");
        for (path, text) in files {
            let file = src.join(path);
            std::fs::create_dir_all(file.parent().expect("a folder")).expect("folder");
            std::fs::write(file, text).expect("file");
        }
        dir
    }

    #[test]
    fn the_workspace_keeps_every_rule_of_the_tables() {
        let found = check(&workspace()).expect("checked");
        let listed: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert!(found.is_empty(), "{}", listed.join("\n"));
    }

    #[test]
    fn a_domain_that_draws_a_random_number_or_reads_the_clock_is_named_with_file_and_line() {
        let dir = fixture(&[
            ("lib.rs", "//! demo\npub mod domain;\n"),
            (
                "domain.rs",
                "//! rules\nfn code() -> usize {\n    fastrand::usize(..3)\n}\nfn now() { let _ = chrono::Utc::now(); } // Utc::now in a comment is fine\n",
            ),
        ]);
        let found = check(dir.path()).expect("checked");
        let places: Vec<(&str, &str)> = found.iter().map(|v| (v.rule, v.place.as_str())).collect();
        assert_eq!(
            places,
            vec![
                (LAYER_RULES[0].name, "modules/demo/src/domain.rs:3"),
                (LAYER_RULES[0].name, "modules/demo/src/domain.rs:5"),
            ]
        );
    }

    #[test]
    fn actix_web_outside_http_is_named_and_inside_http_is_not() {
        let dir = fixture(&[
            (
                "use_cases/place.rs",
                "//! a use case\nuse actix_web::HttpResponse;\n",
            ),
            ("http/routes.rs", "//! routes\nuse actix_web::web;\n"),
        ]);
        let found = check(dir.path()).expect("checked");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].rule, LAYER_RULES[1].name);
        assert_eq!(found[0].place, "modules/demo/src/use_cases/place.rs:2");
    }

    #[test]
    fn storage_outside_db_is_named_and_inside_db_is_not() {
        let dir = fixture(&[
            (
                "lib.rs",
                "//! demo
use db::DatabaseTransaction;
",
            ),
            (
                "use_cases/place.rs",
                "//! a use case
use sea_orm::EntityTrait;
fn f() {
    let _ = messaging::db::query;
}
async fn g(c: &sqlx::PgPool) {}
",
            ),
            (
                "db/orders.rs",
                "//! orders
use sea_orm::entity::prelude::*;
use messaging::db::execute;
",
            ),
        ]);
        let found = check(dir.path()).expect("checked");
        let places: Vec<(&str, &str)> = found.iter().map(|v| (v.rule, v.place.as_str())).collect();
        assert_eq!(
            places,
            vec![
                (LAYER_RULES[2].name, "modules/demo/src/use_cases/place.rs:2"),
                (LAYER_RULES[2].name, "modules/demo/src/use_cases/place.rs:4"),
                (LAYER_RULES[2].name, "modules/demo/src/use_cases/place.rs:6"),
            ]
        );
    }

    #[test]
    fn an_http_client_built_outside_runtime_tls_is_named() {
        let dir = fixture(&[(
            "lib.rs",
            "//! demo\nfn f() {\n    let _ = reqwest::Client::new(); // Client::builder() here is fine\n    let _ = runtime::tls::client_builder(None);\n}\n",
        )]);
        let tls = dir.path().join("shared/runtime/src");
        std::fs::create_dir_all(&tls).expect("folder");
        std::fs::write(
            tls.join("tls.rs"),
            "//! tls\nfn f() { reqwest::Client::builder(); }\n",
        )
        .expect("file");
        let found = check(dir.path()).expect("checked");
        let places: Vec<(&str, &str)> = found.iter().map(|v| (v.rule, v.place.as_str())).collect();
        assert_eq!(
            places,
            vec![(CODE_RULES[0].name, "modules/demo/src/lib.rs:3")]
        );
    }

    #[test]
    fn a_file_without_its_opening_doc_line_is_named() {
        let dir = fixture(&[("lib.rs", "pub mod x;\n")]);
        let found = check(dir.path()).expect("checked");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].rule, RULE_FILE_DOC);
        assert_eq!(found[0].place, "modules/demo/src/lib.rs:1");
    }
}
