//! A scratch copy of the workspace: its files (tracked and new, not ignored) in a fresh
//! folder, for commands that must change a tree without touching this one.

use std::path::Path;
use std::process::Command;

use anyhow::Context;

pub fn copy_workspace(root: &Path) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    sync_workspace(root, dir.path())?;
    Ok(dir)
}

/// Makes `dir` hold the workspace's files (tracked and new, not ignored) as they are in
/// `root`, rewriting only the files whose bytes differ and removing the ones `root` no
/// longer has. A file left alone keeps its modification time, so a build in a kept copy
/// recompiles only the crates whose files changed.
pub fn sync_workspace(root: &Path, dir: &Path) -> anyhow::Result<()> {
    let files = Command::new("git")
        .current_dir(root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .context("git ls-files (the workspace must be a git checkout)")?;
    anyhow::ensure!(files.status.success(), "git ls-files failed");
    let mut wanted = std::collections::HashSet::new();
    for file in String::from_utf8_lossy(&files.stdout)
        .split('\0')
        .filter(|f| !f.is_empty())
    {
        let from = root.join(file);
        if !from.is_file() {
            continue;
        }
        let to = dir.join(file);
        wanted.insert(to.clone());
        if std::fs::read(&to).ok() == Some(std::fs::read(&from)?) {
            continue;
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&from, &to).with_context(|| format!("copying {file}"))?;
    }
    remove_others(dir, &wanted)
}

/// Removes every file under `dir` that is not in `wanted`.
fn remove_others(
    dir: &Path,
    wanted: &std::collections::HashSet<std::path::PathBuf>,
) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            remove_others(&path, wanted)?;
        } else if !wanted.contains(&path) {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}
