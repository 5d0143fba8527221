//! `cargo xtask extract <module>` and `cargo xtask inline <module>`.
//!
//! Extract turns a module into its own service: it checks the module may leave (the
//! boundary rules), generates `services/<module>/` (a crate that compiles only that module
//! on the shared runtime, its configuration, a Dockerfile, a compose file and Kubernetes
//! manifests), and switches the monolith off that module and onto the Redis Streams bus.
//! Inline does the reverse. Both are idempotent and have a dry run; every edit they make to
//! existing files is between `xtask:` markers or on the two configuration lines they own,
//! so an extract followed by an inline leaves the tree exactly as it was. Neither moves
//! data: that is `cargo xtask move-data`, run between deployments (see the README).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::boundaries;
use crate::progress::Steps;
use crate::templates;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The module to move.
    pub(crate) module: String,
    /// Show what would change, change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Inline even if the service's database still holds the module's data.
    #[arg(long)]
    pub(crate) force: bool,
}

/// One change to the tree.
#[derive(Debug)]
enum Change {
    Write { path: PathBuf, content: String },
    RemoveDir { path: PathBuf },
}

/// The modules of the tree and which of them run as services.
struct Layout {
    root: PathBuf,
    modules: Vec<String>,
}

impl Layout {
    fn read(root: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            root: root.to_path_buf(),
            modules: boundaries::modules(root)?,
        })
    }

    fn extracted(&self, module: &str) -> bool {
        self.root
            .join("services")
            .join(module)
            .join("Cargo.toml")
            .is_file()
    }

    fn check_known(&self, module: &str) -> anyhow::Result<()> {
        if !self.modules.iter().any(|m| m == module) {
            bail!(
                "there is no module {module:?} (modules: {})",
                self.modules.join(", ")
            );
        }
        Ok(())
    }
}

/// A module's type name, as its `lib.rs` declares it (`pub struct Fulfillment;`).
fn module_type(root: &Path, module: &str) -> anyhow::Result<String> {
    let lib = std::fs::read_to_string(root.join("modules").join(module).join("src/lib.rs"))?;
    let expected = capitalized(module);
    anyhow::ensure!(
        lib.contains(&format!("pub struct {expected};")),
        "modules/{module}/src/lib.rs should declare `pub struct {expected};` implementing module_api::Module"
    );
    Ok(expected)
}

pub(crate) fn capitalized(module: &str) -> String {
    module
        .split('_')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Replaces what lies between the `begin` and `end` marker lines of `text`.
fn between_markers(text: &str, marker: &str, lines: &[String]) -> anyhow::Result<String> {
    let begin = format!("xtask:{marker}:begin");
    let end = format!("xtask:{marker}:end");
    let mut out = String::new();
    let mut inside = false;
    let mut seen = false;
    for line in text.split_inclusive('\n') {
        if line.contains(&end) {
            inside = false;
        }
        if !inside {
            out.push_str(line);
        }
        if line.contains(&begin) {
            inside = true;
            seen = true;
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    anyhow::ensure!(seen && !inside, "markers {begin} / {end} not found");
    Ok(out)
}

/// Sets `key = value` on the first line that starts with `key =` inside `[section]`,
/// keeping any trailing comment.
pub(crate) fn set_toml_line(
    text: &str,
    section: &str,
    key: &str,
    value: &str,
) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut current = String::new();
    let mut done = false;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            current = trimmed.trim_matches(|c| c == '[' || c == ']').to_owned();
        }
        if !done && current == section && trimmed.starts_with(&format!("{key} =")) {
            let comment = line
                .find(" #")
                .map(|at| &line[at..])
                .unwrap_or("")
                .trim_end();
            let assignment = format!("{key} = {value}");
            let padded = if comment.is_empty() {
                assignment
            } else {
                // Keep the comment in the column it was in.
                let column = line.find(" #").unwrap_or(0);
                format!("{assignment:<column$}{comment}")
            };
            out.push_str(&padded);
            out.push('\n');
            done = true;
        } else {
            out.push_str(line);
        }
    }
    anyhow::ensure!(done, "no `{key} =` line in [{section}]");
    Ok(out)
}

/// The edits of the monolith's files for the given set of extracted modules.
fn monolith_edits(layout: &Layout, extracted: &[String]) -> anyhow::Result<Vec<Change>> {
    let root = &layout.root;
    let inside: Vec<&String> = layout
        .modules
        .iter()
        .filter(|m| !extracted.contains(m))
        .collect();
    let mut changes = Vec::new();

    let lib = root.join("app/src/lib.rs");
    let mut lines = Vec::new();
    for m in &inside {
        lines.push(format!("        Arc::new({m}::{}),", module_type(root, m)?));
    }
    changes.push(Change::Write {
        content: between_markers(&std::fs::read_to_string(&lib)?, "modules", &lines)?,
        path: lib,
    });

    let manifest = root.join("app/Cargo.toml");
    let lines: Vec<String> = inside
        .iter()
        .map(|m| format!("{m}.workspace = true"))
        .collect();
    changes.push(Change::Write {
        content: between_markers(&std::fs::read_to_string(&manifest)?, "modules", &lines)?,
        path: manifest,
    });

    let workspace = root.join("Cargo.toml");
    let lines: Vec<String> = extracted
        .iter()
        .map(|m| format!("    \"services/{m}\","))
        .collect();
    changes.push(Change::Write {
        content: between_markers(&std::fs::read_to_string(&workspace)?, "services", &lines)?,
        path: workspace,
    });

    let config = root.join("config/base.toml");
    let enabled = format!(
        "[{}]",
        inside
            .iter()
            .map(|m| format!("\"{m}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let text = set_toml_line(
        &std::fs::read_to_string(&config)?,
        "modules",
        "enabled",
        &enabled,
    )?;
    let kind = if extracted.is_empty() {
        "\"local\""
    } else {
        "\"hybrid\""
    };
    let text = set_toml_line(&text, "bus", "kind", kind)?;
    changes.push(Change::Write {
        path: config,
        content: text,
    });
    Ok(changes)
}

fn currently_extracted(layout: &Layout) -> Vec<String> {
    layout
        .modules
        .iter()
        .filter(|m| layout.extracted(m))
        .cloned()
        .collect()
}

/// Applies changes (or, dry, shows them); returns how many files actually change.
fn apply(root: &Path, changes: &[Change], dry_run: bool) -> anyhow::Result<usize> {
    let mut changed = 0;
    for change in changes {
        match change {
            Change::Write { path, content } => {
                let shown = path.strip_prefix(root).unwrap_or(path).display();
                let old = std::fs::read_to_string(path).ok();
                if old.as_deref() == Some(content.as_str()) {
                    continue;
                }
                changed += 1;
                let verb = if old.is_some() { "edit  " } else { "create" };
                eprintln!("{verb} {shown}");
                if !dry_run {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    std::fs::write(path, content).with_context(|| format!("writing {shown}"))?;
                }
            }
            Change::RemoveDir { path } => {
                if path.exists() {
                    changed += 1;
                    eprintln!(
                        "remove {}/",
                        path.strip_prefix(root).unwrap_or(path).display()
                    );
                    if !dry_run {
                        std::fs::remove_dir_all(path)?;
                    }
                }
            }
        }
    }
    Ok(changed)
}

/// Brings Cargo.lock in line with the workspace's members.
fn refresh_lockfile(root: &Path) -> anyhow::Result<()> {
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root)
            .args(["update", "--workspace", "--offline", "--quiet"])
            .stdout(std::process::Stdio::null())
            .status()?;
    anyhow::ensure!(
        status.success(),
        "cargo update --workspace failed after the change"
    );
    Ok(())
}

pub(crate) fn extract(root: &Path, args: &Args) -> anyhow::Result<()> {
    let layout = Layout::read(root)?;
    let module = args.module.as_str();
    layout.check_known(module)?;
    let mut steps = Steps::new("extract", 4);
    steps.step(format!("checking that {module} keeps to its boundaries"));
    let violations = boundaries::check_module(root, module)?;
    if !violations.is_empty() {
        for v in &violations {
            eprintln!("  {v}");
        }
        bail!(
            "cannot extract {module}: {} boundary violation(s) above; a module that shares code, routes or tables with another cannot run on its own",
            violations.len()
        );
    }
    steps.detail("no violation");
    let ty = module_type(root, module)?;
    let mut extracted = currently_extracted(&layout);
    if !extracted.iter().any(|m| m == module) {
        extracted.push(module.to_owned());
    }
    extracted.sort();
    let index = layout.modules.iter().position(|m| m == module).unwrap_or(0);
    let service = templates::Service::new(root, module, &ty, 8081 + index as u16)?;
    let files: Vec<Change> = service
        .files()?
        .into_iter()
        .map(|(path, content)| Change::Write {
            path: root.join("services").join(module).join(path),
            content,
        })
        .collect();
    steps.step(format!(
        "generating services/{module}/ ({} files)",
        files.len()
    ));
    let generated = apply(root, &files, args.dry_run)?;
    steps.detail(format!("{generated} of {} new or changed", files.len()));
    let edits = monolith_edits(&layout, &extracted)?;
    steps.step(format!(
        "switching the monolith off {module} and onto the hybrid bus ({} files)",
        edits.len()
    ));
    let edited = apply(root, &edits, args.dry_run)?;
    steps.detail(format!("{edited} of {} changed", edits.len()));
    let changed = generated + edited;
    if args.dry_run {
        steps.step("Cargo.lock: left as it is (dry run)");
        eprintln!("\ndry run: {changed} file(s) would change; nothing was written");
        return Ok(());
    }
    if changed == 0 {
        steps.step("Cargo.lock: nothing to refresh");
        eprintln!("\n{module} is already extracted; nothing changed");
    } else {
        steps.step(
            "refreshing Cargo.lock (cargo update --workspace --offline) and docs/module-map.md",
        );
        refresh_lockfile(root)?;
        boundaries::refresh_map(root)?;
        eprintln!("\n{module} is now the service {}", service.package);
    }
    eprintln!("{}", service.next_steps());
    Ok(())
}

pub(crate) fn inline(root: &Path, args: &Args) -> anyhow::Result<()> {
    let layout = Layout::read(root)?;
    let module = args.module.as_str();
    layout.check_known(module)?;
    if !layout.extracted(module) {
        // Still make sure the monolith's files say so (an interrupted inline, say).
        let extracted = currently_extracted(&layout);
        let changed = apply(root, &monolith_edits(&layout, &extracted)?, args.dry_run)?;
        eprintln!(
            "{module} is not extracted; {changed} file(s) {}",
            if args.dry_run {
                "would change"
            } else {
                "changed"
            }
        );
        return Ok(());
    }
    if !args.force {
        check_data_moved_back(root, module)?;
    }
    let extracted: Vec<String> = currently_extracted(&layout)
        .into_iter()
        .filter(|m| m != module)
        .collect();
    let mut steps = Steps::new("inline", 3);
    steps.step(format!("removing services/{module}/"));
    let removed = apply(
        root,
        &[Change::RemoveDir {
            path: root.join("services").join(module),
        }],
        args.dry_run,
    )?;
    let edits = monolith_edits(&layout, &extracted)?;
    steps.step(format!(
        "switching the monolith back on {module} ({} files)",
        edits.len()
    ));
    let edited = apply(root, &edits, args.dry_run)?;
    steps.detail(format!("{edited} of {} changed", edits.len()));
    let changed = removed + edited;
    if args.dry_run {
        steps.step("Cargo.lock: left as it is (dry run)");
        eprintln!("\ndry run: {changed} change(s); nothing was written");
        return Ok(());
    }
    steps.step("refreshing Cargo.lock (cargo update --workspace --offline) and docs/module-map.md");
    refresh_lockfile(root)?;
    boundaries::refresh_map(root)?;
    eprintln!("\n{module} is back in the monolith (its data was moved back before)");
    let bus = if extracted.is_empty() {
        "with no service left it uses the in-process bus again".to_owned()
    } else {
        format!(
            "it stays on the hybrid bus, over Redis to and from {}",
            extracted.join(", ")
        )
    };
    crate::progress::next(&[
        "build the monolith:  cargo build -p app".to_owned(),
        format!("check it:            cargo xtask boundaries && cargo test -p {module}"),
        format!("run and deploy it:   cargo run -p app   ({bus})"),
    ]);
    Ok(())
}

/// Refuses to inline while the service's own database still holds the module's data: the
/// monolith would start on an empty schema and the data would be stranded.
fn check_data_moved_back(root: &Path, module: &str) -> anyhow::Result<()> {
    let dir = root.join("services").join(module).join("config");
    let settings = runtime::config::Settings::load_from_process_env_in(&dir.display().to_string())
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let holds_data = match settings.database.backend {
        runtime::config::Backend::Sqlite => {
            runtime::db::sqlite_file(&settings.database.sqlite, module).is_file()
        }
        runtime::config::Backend::Postgres => {
            let pg = &settings.database.postgres;
            let check = async {
                let conn = runtime::db::connect_postgres(
                    pg,
                    &pg.owner_user,
                    pg.owner_password
                        .as_ref()
                        .map(|s| secrecy::ExposeSecret::expose_secret(s).to_owned()),
                    module,
                    1,
                )
                .await?;
                let row = sea_orm::ConnectionTrait::query_one_raw(
                    &conn,
                    sea_orm::Statement::from_string(
                        sea_orm::DbBackend::Postgres,
                        format!("SELECT COUNT(*) FROM pg_namespace WHERE nspname = '{module}'"),
                    ),
                )
                .await?;
                let n: i64 = row.map(|r| r.try_get_by_index(0)).transpose()?.unwrap_or(0);
                anyhow::Ok(n > 0)
            };
            match tokio::runtime::Runtime::new()?.block_on(check) {
                Ok(holds) => holds,
                // No database at all (never deployed): nothing to strand.
                Err(e) if e.to_string().contains("does not exist") => false,
                Err(e) => bail!(
                    "cannot check the service's database ({e:#}); use --force to inline anyway"
                ),
            }
        }
    };
    if holds_data {
        bail!(
            "the service's database still holds {module}'s data: stop {module}-service and run \
             `cargo xtask move-data {module} --in` first (or --force to inline anyway)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_replaced_in_place() {
        let text = "a\n# xtask:m:begin\nold\n# xtask:m:end\nb\n";
        let out = between_markers(text, "m", &["new1".into(), "new2".into()]).expect("markers");
        assert_eq!(out, "a\n# xtask:m:begin\nnew1\nnew2\n# xtask:m:end\nb\n");
        assert!(between_markers("no markers\n", "m", &[]).is_err());
    }

    #[test]
    fn a_toml_line_is_set_keeping_its_comment() {
        let text = "[bus]\nkind = \"local\"              # local or redis\n[other]\nkind = \"x\"\n";
        let out = set_toml_line(text, "bus", "kind", "\"redis\"").expect("set");
        assert_eq!(
            out,
            "[bus]\nkind = \"redis\"              # local or redis\n[other]\nkind = \"x\"\n"
        );
        let back = set_toml_line(&out, "bus", "kind", "\"local\"").expect("set");
        assert_eq!(back, text);
    }

    #[test]
    fn type_names_are_capitalized() {
        assert_eq!(capitalized("fulfillment"), "Fulfillment");
        assert_eq!(capitalized("order_history"), "OrderHistory");
    }
}
