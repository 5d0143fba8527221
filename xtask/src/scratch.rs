//! A scratch copy of the workspace: its files (tracked and new, not ignored) in a fresh
//! folder, for commands that must change a tree without touching this one.

use std::path::Path;
use std::process::Command;

use anyhow::Context;

pub fn copy_workspace(root: &Path) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
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
    for file in String::from_utf8_lossy(&files.stdout)
        .split('\0')
        .filter(|f| !f.is_empty())
    {
        let from = root.join(file);
        if !from.is_file() {
            continue;
        }
        let to = dir.path().join(file);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&from, &to).with_context(|| format!("copying {file}"))?;
    }
    Ok(dir)
}
