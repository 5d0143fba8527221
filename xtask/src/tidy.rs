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
            "module_api",
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
        name: "only a module's db/ layer knows sea-orm, sqlx, migrations and the SQL helpers",
        scope: Scope::Outside("db"),
        forbidden: &["sea_orm", "sea_orm_migration", "sqlx", "module_api::sql"],
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
/// default way panics when built; `module_api::tls` hands each one rustls on ring. The
/// workspace denies `unsafe` code rather than forbidding it, so that the one file that
/// must call C (the C library's allocator, for SQLite's freed memory) can allow it call by
/// call; every other file keeps none.
pub(crate) const CODE_RULES: &[CodeRule] = &[
    CodeRule {
        name: "every HTTP client is built by module_api::tls",
        forbidden: &["Client::new()", "Client::builder()"],
        // The rule's own table, and its test, name what it forbids.
        except: &["shared/module-api/src/tls.rs", "xtask/src/tidy.rs"],
    },
    CodeRule {
        name: "unsafe code only where the C library's allocator is called",
        forbidden: &["unsafe ", "unsafe_code"],
        except: &["shared/runtime/src/c_heap.rs", "xtask/src/tidy.rs"],
    },
];

/// Which crates of ours a crate of ours may depend on (its `[dependencies]`; tests and
/// benches may use more). `crates` is a folder of the workspace, or `folder/*` for every
/// crate in it; `modules` in `may_use` stands for every module crate.
#[derive(Debug)]
pub(crate) struct CrateRule {
    pub(crate) crates: &'static str,
    pub(crate) may_use: &'static [&'static str],
}

pub(crate) const RULE_CRATE_DEPS: &str =
    "a crate of ours depends only on the crates of ours its row of the crate table allows";

pub(crate) const RULE_VENDORED: &str =
    "a patched copy of a crate under vendor/ is the crate Cargo.lock resolves";

/// The platform in layers, each crate using only those below it: `kernel` (value types)
/// and `contracts` (events); `store` (a module's connection and SQL helpers);
/// `messaging` (outbox, inbox, buses); `module-api` (all a module may use); `runtime` (the
/// host, for binaries and the test kit only). A module sees `kernel`, `contracts` and `module-api`, so the
/// host's settings, buses and relays are out of its reach.
pub(crate) const CRATE_RULES: &[CrateRule] = &[
    CrateRule {
        crates: "shared/kernel",
        may_use: &[],
    },
    CrateRule {
        crates: "shared/contracts",
        may_use: &["kernel"],
    },
    CrateRule {
        crates: "shared/store",
        may_use: &[],
    },
    CrateRule {
        crates: "shared/messaging",
        may_use: &["kernel", "contracts", "store"],
    },
    CrateRule {
        crates: "shared/module-api",
        may_use: &["kernel", "contracts", "store", "messaging"],
    },
    CrateRule {
        crates: "shared/runtime",
        may_use: &["kernel", "contracts", "store", "messaging", "module-api"],
    },
    CrateRule {
        crates: "shared/testkit",
        may_use: &[
            "kernel",
            "contracts",
            "store",
            "messaging",
            "module-api",
            "runtime",
        ],
    },
    CrateRule {
        crates: "modules/*",
        may_use: &["kernel", "contracts", "module-api"],
    },
    CrateRule {
        crates: "app",
        may_use: &["module-api", "runtime", "modules"],
    },
    CrateRule {
        crates: "services/*",
        may_use: &["runtime", "modules"],
    },
    CrateRule {
        crates: "xtask",
        may_use: &["module-api", "runtime", "modules"],
    },
];

/// The folders of the workspace whose Rust files keep the house rules.
const SOURCE_ROOTS: &[&str] = &["app", "shared", "modules", "xtask", "services"];

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
    found.extend(check_crates(root)?);
    found.extend(check_vendored(root)?);
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

/// One crate of ours: its folder (from the workspace root), name and the names of its
/// `[dependencies]`.
struct OurCrate {
    folder: String,
    name: String,
    dependencies: Vec<String>,
}

/// Every crate of the workspace's source folders (a folder with a `Cargo.toml` naming a
/// package), in folder order.
fn our_crates(root: &Path) -> anyhow::Result<Vec<OurCrate>> {
    let mut folders = Vec::new();
    for top in SOURCE_ROOTS {
        let dir = root.join(top);
        if dir.join("Cargo.toml").is_file() {
            folders.push(top.to_string());
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.path().join("Cargo.toml").is_file() {
                    folders.push(format!("{top}/{}", entry.file_name().to_string_lossy()));
                }
            }
        }
    }
    folders.sort();
    let mut crates = Vec::new();
    for folder in folders {
        let manifest = root.join(&folder).join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)?;
        let table: toml::Table = text
            .parse()
            .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.display()))?;
        let Some(name) = table
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
        else {
            continue;
        };
        let dependencies = table
            .get("dependencies")
            .and_then(|d| d.as_table())
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default();
        crates.push(OurCrate {
            folder,
            name: name.to_owned(),
            dependencies,
        });
    }
    Ok(crates)
}

/// Every dependency of a crate of ours on a crate of ours that its row of [`CRATE_RULES`]
/// does not allow, and every crate of ours without a row.
fn check_crates(root: &Path) -> anyhow::Result<Vec<Violation>> {
    let crates = our_crates(root)?;
    let modules: Vec<&str> = crates
        .iter()
        .filter(|c| c.folder.starts_with("modules/"))
        .map(|c| c.name.as_str())
        .collect();
    let ours: Vec<&str> = crates.iter().map(|c| c.name.as_str()).collect();
    let mut found = Vec::new();
    for krate in &crates {
        let place = format!("{}/Cargo.toml", krate.folder);
        let row = CRATE_RULES
            .iter()
            .find(|r| match r.crates.strip_suffix("/*") {
                Some(parent) => krate
                    .folder
                    .strip_prefix(parent)
                    .is_some_and(|rest| rest.starts_with('/') && !rest[1..].contains('/')),
                None => r.crates == krate.folder,
            });
        let Some(row) = row else {
            found.push(Violation {
                module: krate.name.clone(),
                rule: RULE_CRATE_DEPS,
                place,
                detail: format!("{} has no row in the crate table", krate.folder),
            });
            continue;
        };
        for dep in &krate.dependencies {
            if !ours.contains(&dep.as_str()) {
                continue;
            }
            let allowed = row.may_use.contains(&dep.as_str())
                || (row.may_use.contains(&"modules") && modules.contains(&dep.as_str()));
            if !allowed {
                found.push(Violation {
                    module: krate.name.clone(),
                    rule: RULE_CRATE_DEPS,
                    place: place.clone(),
                    detail: format!("depends on {dep}"),
                });
            }
        }
    }
    Ok(found)
}

/// Every patched copy under `vendor/` (a folder with a `Cargo.toml`) that `Cargo.lock` does
/// not resolve to, or resolves beside the published crate of the same name: cargo drops a
/// `[patch.crates-io]` entry whose version no longer matches what is asked for with only a
/// warning, and the build goes on with the published crate.
fn check_vendored(root: &Path) -> anyhow::Result<Vec<Violation>> {
    let Ok(entries) = std::fs::read_dir(root.join("vendor")) else {
        return Ok(Vec::new());
    };
    let mut copies: Vec<(String, String, String)> = Vec::new();
    for entry in entries.flatten() {
        let manifest = entry.path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let table: toml::Table = text
            .parse()
            .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.display()))?;
        let field = |key: &str| {
            table
                .get("package")
                .and_then(|p| p.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        if let (Some(name), Some(version)) = (field("name"), field("version")) {
            let folder = format!("vendor/{}", entry.file_name().to_string_lossy());
            copies.push((folder, name, version));
        }
    }
    copies.sort();
    let lock_path = root.join("Cargo.lock");
    let lock: toml::Table = std::fs::read_to_string(&lock_path)?
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: {e}", lock_path.display()))?;
    let packages: Vec<&toml::Table> = lock
        .get("package")
        .and_then(|p| p.as_array())
        .map(|a| a.iter().filter_map(|p| p.as_table()).collect())
        .unwrap_or_default();
    let mut found = Vec::new();
    for (folder, name, version) in copies {
        let mut copy = false;
        let mut published = Vec::new();
        for package in packages
            .iter()
            .filter(|p| p.get("name").and_then(|n| n.as_str()) == Some(name.as_str()))
        {
            let locked = package.get("version").and_then(|v| v.as_str());
            if package.get("source").is_some() {
                published.push(locked.unwrap_or("?").to_owned());
            } else if locked == Some(version.as_str()) {
                copy = true;
            }
        }
        let detail = if !copy {
            format!("Cargo.lock does not use the copy of {name} {version}")
        } else if !published.is_empty() {
            format!(
                "Cargo.lock uses the published {name} {} beside the copy",
                published.join(", ")
            )
        } else {
            continue;
        };
        found.push(Violation {
            module: name,
            rule: RULE_VENDORED,
            place: format!("{folder}/Cargo.toml"),
            detail,
        });
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
    let _ = module_api::sql::query;
}
async fn g(c: &sqlx::PgPool) {}
",
            ),
            (
                "db/orders.rs",
                "//! orders
use sea_orm::entity::prelude::*;
use module_api::sql::execute;
",
            ),
            (
                "migrations.rs",
                "//! migrations outside db/
use sea_orm_migration::prelude::*;
",
            ),
        ]);
        let found = check(dir.path()).expect("checked");
        let mut places: Vec<(&str, &str)> =
            found.iter().map(|v| (v.rule, v.place.as_str())).collect();
        // Files are read in the file system's order.
        places.sort();
        assert_eq!(
            places,
            vec![
                (LAYER_RULES[2].name, "modules/demo/src/migrations.rs:2"),
                (LAYER_RULES[2].name, "modules/demo/src/use_cases/place.rs:2"),
                (LAYER_RULES[2].name, "modules/demo/src/use_cases/place.rs:4"),
                (LAYER_RULES[2].name, "modules/demo/src/use_cases/place.rs:6"),
            ]
        );
    }

    /// The rule and place of each violation in a module's `lib.rs` holding `module_code`
    /// and a workspace file `excepted` (its path, its code) that a rule's exception covers.
    fn code_rule_places(module_code: &str, excepted: (&str, &str)) -> Vec<(&'static str, String)> {
        let dir = fixture(&[("lib.rs", module_code)]);
        let file = dir.path().join(excepted.0);
        std::fs::create_dir_all(file.parent().expect("a folder")).expect("folder");
        std::fs::write(file, excepted.1).expect("file");
        let found = check(dir.path()).expect("checked");
        found.into_iter().map(|v| (v.rule, v.place)).collect()
    }

    #[test]
    fn an_http_client_built_outside_module_api_tls_is_named() {
        let places = code_rule_places(
            "//! demo\nfn f() {\n    let _ = reqwest::Client::new(); // Client::builder() here is fine\n    let _ = module_api::tls::client_builder(None);\n}\n",
            (
                "shared/module-api/src/tls.rs",
                "//! tls\nfn f() { reqwest::Client::builder(); }\n",
            ),
        );
        assert_eq!(
            places,
            vec![(CODE_RULES[0].name, "modules/demo/src/lib.rs:3".to_owned())]
        );
    }

    #[test]
    fn unsafe_code_outside_the_c_heap_is_named() {
        let places = code_rule_places(
            "//! demo\n#[allow(unsafe_code)]\nfn f() {\n    unsafe { g() } // unsafe in a comment is fine\n}\nconst CSP: &str = \"script-src 'unsafe-inline'\";\n",
            (
                "shared/runtime/src/c_heap.rs",
                "//! c heap\n#[expect(unsafe_code)]\nfn f() { unsafe { g() } }\n",
            ),
        );
        assert_eq!(
            places,
            vec![
                (CODE_RULES[1].name, "modules/demo/src/lib.rs:2".to_owned()),
                (CODE_RULES[1].name, "modules/demo/src/lib.rs:4".to_owned()),
            ]
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

    /// Writes `folder/Cargo.toml` of package `name` depending on `dependencies`.
    fn manifest(root: &Path, folder: &str, name: &str, dependencies: &[&str]) {
        let dir = root.join(folder);
        std::fs::create_dir_all(&dir).expect("folder");
        let deps: String = dependencies
            .iter()
            .map(|d| format!("{d}.workspace = true\n"))
            .collect();
        std::fs::write(
            dir.join("Cargo.toml"),
            format!("[package]\nname = \"{name}\"\n\n[dependencies]\n{deps}\n[dev-dependencies]\nruntime.workspace = true\n"),
        )
        .expect("manifest");
    }

    #[test]
    fn a_module_depending_on_the_host_or_a_crate_without_a_row_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        manifest(root, "shared/kernel", "kernel", &[]);
        manifest(root, "shared/runtime", "runtime", &["kernel"]);
        manifest(root, "shared/module-api", "module-api", &["kernel"]);
        // Allowed: kernel and module-api, an outside crate, and runtime among the
        // dev-dependencies. Refused: runtime among its own dependencies.
        manifest(
            root,
            "modules/demo",
            "demo",
            &["kernel", "module-api", "serde", "runtime"],
        );
        manifest(root, "modules/other", "other", &["demo"]);
        manifest(root, "shared/newcomer", "newcomer", &[]);
        manifest(root, "app", "app", &["runtime", "demo", "other"]);
        let found = check_crates(root).expect("checked");
        let seen: Vec<(&str, &str, &str)> = found
            .iter()
            .map(|v| (v.rule, v.place.as_str(), v.detail.as_str()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    RULE_CRATE_DEPS,
                    "modules/demo/Cargo.toml",
                    "depends on runtime"
                ),
                (
                    RULE_CRATE_DEPS,
                    "modules/other/Cargo.toml",
                    "depends on demo"
                ),
                (
                    RULE_CRATE_DEPS,
                    "shared/newcomer/Cargo.toml",
                    "shared/newcomer has no row in the crate table"
                ),
            ]
        );
    }

    #[test]
    fn a_patched_copy_the_lock_file_does_not_resolve_to_is_named() {
        // Through `check`, so the row is part of the tables' check.
        let dir = fixture(&[("lib.rs", "//! demo\n")]);
        let root = dir.path();
        std::fs::create_dir_all(root.join("vendor/demo-http")).expect("vendor");
        std::fs::write(
            root.join("vendor/demo-http/Cargo.toml"),
            "[package]\nname = \"demo-http\"\nversion = \"3.2.0\"\n",
        )
        .expect("manifest");
        let registry = "source = \"registry+https://github.com/rust-lang/crates.io-index\"\n";
        let lock = |packages: &str| {
            std::fs::write(
                root.join("Cargo.lock"),
                format!("version = 4\n\n{packages}"),
            )
            .expect("lock");
            check(root).expect("checked")
        };
        let details = |found: Vec<Violation>| -> Vec<(String, String)> {
            found.into_iter().map(|v| (v.place, v.detail)).collect()
        };

        let used = lock("[[package]]\nname = \"demo-http\"\nversion = \"3.2.0\"\n");
        assert!(used.is_empty(), "{used:?}");
        // A newer actix-web asked for 3.3: the patch no longer applies.
        let dropped = lock(&format!(
            "[[package]]\nname = \"demo-http\"\nversion = \"3.3.0\"\n{registry}"
        ));
        assert_eq!(
            details(dropped),
            [(
                "vendor/demo-http/Cargo.toml".to_owned(),
                "Cargo.lock does not use the copy of demo-http 3.2.0".to_owned()
            )]
        );
        let beside = lock(&format!(
            "[[package]]\nname = \"demo-http\"\nversion = \"3.2.0\"\n\n[[package]]\nname = \"demo-http\"\nversion = \"2.0.1\"\n{registry}"
        ));
        assert_eq!(
            details(beside),
            [(
                "vendor/demo-http/Cargo.toml".to_owned(),
                "Cargo.lock uses the published demo-http 2.0.1 beside the copy".to_owned()
            )]
        );
    }

    #[test]
    fn the_crate_table_gives_a_module_kernel_contracts_and_module_api_only() {
        let row = CRATE_RULES
            .iter()
            .find(|r| r.crates == "modules/*")
            .expect("a row for the modules");
        assert_eq!(row.may_use, ["kernel", "contracts", "module-api"]);
    }
}
