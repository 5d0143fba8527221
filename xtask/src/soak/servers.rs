//! Private PostgreSQL and Redis servers for the scenarios that stop them: each on a free
//! loopback port in a folder of its own, so the machine's shared servers (which other
//! people's tests use) are never touched. Both are stopped and removed when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::harness::{Launch, Process, free_port};

/// The newest PostgreSQL installed the Debian way (`/usr/lib/postgresql/<major>/bin`).
fn pg_bin() -> anyhow::Result<PathBuf> {
    let mut majors: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL's server binaries are needed in /usr/lib/postgresql")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    majors.sort();
    let major = majors
        .last()
        .context("no PostgreSQL in /usr/lib/postgresql")?;
    Ok(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")))
}

/// A PostgreSQL cluster of our own. PostgreSQL refuses to run as root, so its commands run
/// as the `postgres` user, in a folder that user owns.
pub(crate) struct PrivatePostgres {
    root: PathBuf,
    pub(crate) port: u16,
}

/// Runs a PostgreSQL program as the `postgres` user.
fn as_postgres(program: &str, args: &[&str], cwd: &Path) -> anyhow::Result<()> {
    let output = Command::new("setpriv")
        .args([
            "--reuid",
            "postgres",
            "--regid",
            "postgres",
            "--clear-groups",
            "--",
        ])
        .arg(pg_bin()?.join(program))
        .args(args)
        .current_dir(cwd)
        .output()
        .with_context(|| format!("running {program} as postgres"))?;
    if !output.status.success() {
        bail!(
            "{program} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

impl PrivatePostgres {
    /// Creates a cluster (trust authentication, superuser `postgres`) and starts it.
    pub(crate) fn create() -> anyhow::Result<Self> {
        let port = free_port()?;
        let root = std::env::temp_dir().join(format!("soak-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&root)?;
        let owner = Command::new("id").args(["-u", "postgres"]).output()?;
        let uid: u32 = String::from_utf8_lossy(&owner.stdout)
            .trim()
            .parse()
            .context("the postgres user is needed to run a private PostgreSQL")?;
        let group = Command::new("id").args(["-g", "postgres"]).output()?;
        let gid: u32 = String::from_utf8_lossy(&group.stdout).trim().parse()?;
        std::os::unix::fs::chown(&root, Some(uid), Some(gid))?;
        let server = Self { root, port };
        as_postgres(
            "initdb",
            &[
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-D",
                &server.data(),
            ],
            &server.root,
        )?;
        server.start()?;
        Ok(server)
    }

    fn data(&self) -> String {
        self.root.join("data").display().to_string()
    }

    /// Starts the server and waits until it accepts connections.
    pub(crate) fn start(&self) -> anyhow::Result<()> {
        // fsync off: the machine does not crash in these runs, and the shared disk is
        // slow; a PostgreSQL restart still loses nothing that was committed.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off",
            self.port,
            self.root.display()
        );
        as_postgres(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                &self.data(),
                "-l",
                &self.root.join("server.log").display().to_string(),
                "-o",
                &options,
            ],
            &self.root,
        )
    }

    /// Stops the server at once (fast shutdown: connections are cut, nothing committed is
    /// lost).
    pub(crate) fn stop(&self) -> anyhow::Result<()> {
        as_postgres(
            "pg_ctl",
            &["stop", "-w", "-m", "fast", "-D", &self.data()],
            &self.root,
        )
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = as_postgres(
            "pg_ctl",
            &["stop", "-w", "-m", "immediate", "-D", &self.data()],
            &self.root,
        );
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A Redis server of our own, keeping its data in an append-only file written on every
/// command, as production must (without it a restart would lose streams).
pub(crate) struct PrivateRedis {
    dir: tempfile::TempDir,
    pub(crate) port: u16,
    process: Option<Process>,
}

impl PrivateRedis {
    pub(crate) fn create() -> anyhow::Result<Self> {
        let mut server = Self {
            dir: tempfile::tempdir()?,
            port: free_port()?,
            process: None,
        };
        server.start()?;
        Ok(server)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub(crate) fn start(&mut self) -> anyhow::Result<()> {
        let dir = self.dir.path().display().to_string();
        let port = self.port.to_string();
        let log = self.dir.path().join("redis.log");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--dir", &dir, "--logfile", &log.display().to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let child = command.spawn().context("starting redis-server")?;
        self.process = Some(Process(child));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &port, "ping"])
                .output();
            if answer.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the private Redis on port {port} did not start");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server (SIGKILL), as a crash would: what it acknowledged is in its
    /// append-only file.
    pub(crate) fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill_now();
        }
    }
}

/// Launches of the app (or a service) that the scenarios start, stop and kill.
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) cwd: PathBuf,
    pub(crate) vars: Vec<(String, String)>,
    pub(crate) port: u16,
    /// Its admin port (`/metrics`), the same across restarts.
    pub(crate) admin_port: u16,
    pub(crate) log: PathBuf,
    pub(crate) process: Option<Process>,
}

impl Node {
    pub(crate) fn start(&mut self) -> anyhow::Result<()> {
        let process = Launch {
            path: self.path.clone(),
            args: Vec::new(),
            cwd: self.cwd.clone(),
            vars: &self.vars,
            port: self.port,
            log: Some(&self.log),
        }
        .start()?;
        self.process = Some(process);
        Ok(())
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill_now();
        }
    }

    /// Whether the process died by itself.
    pub(crate) fn died(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| p.exited())
    }

    /// The last lines of its log, for a report.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}
