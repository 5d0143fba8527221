//! What the bench reads of processes from `/proc`: CPU time (user + system) of a process
//! and of every `postgres` process, resident memory, and which process listens on a port.

use std::time::Duration;

use anyhow::Context;

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub(crate) fn ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The command name and user + system CPU ticks of a process.
fn stat(pid: u32) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    // after ") ": state(3) ppid(4) ... utime(14) stime(15), counted from field 3
    let fields: Vec<&str> = text[close + 2..].split(' ').collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// CPU time used so far by the processes `pids`.
pub(crate) fn cpu(pids: &[u32], ticks: f64) -> Duration {
    let total: u64 = pids.iter().filter_map(|p| stat(*p)).map(|s| s.1).sum();
    Duration::from_secs_f64(total as f64 / ticks)
}

/// CPU time used so far by every process named `postgres` (the server and its backends:
/// ours, and any other client's at the time).
pub(crate) fn postgres_cpu(ticks: f64) -> Duration {
    let mut total = 0u64;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((comm, t)) = stat(pid)
                && comm == "postgres"
            {
                total += t;
            }
        }
    }
    Duration::from_secs_f64(total as f64 / ticks)
}

/// Resident memory of the processes `pids`, in MiB.
pub(crate) fn rss_mib(pids: &[u32]) -> f64 {
    status_kib(pids, "VmRSS:") / 1024.0
}

/// The part of [`rss_mib`] that maps files, in MiB: the program's own code and data and
/// its libraries, pages the kernel can drop and read again (a fault maps the pages around
/// it too, so a larger binary shows more of it). The rest is the heap and the stacks.
pub(crate) fn rss_file_mib(pids: &[u32]) -> f64 {
    status_kib(pids, "RssFile:") / 1024.0
}

/// The sum over `pids` of one `kB` line of `/proc/<pid>/status`.
fn status_kib(pids: &[u32], key: &str) -> f64 {
    pids.iter()
        .filter_map(|pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = text.lines().find(|l| l.starts_with(key))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .sum::<f64>()
}

/// The process listening on `port` of loopback (a server the bench did not start).
pub(crate) fn listener_pid(port: u16) -> anyhow::Result<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is ADDR:PORT in hex; state 0A is LISTEN
            if f.len() > 9
                && f[3] == "0A"
                && f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    == Some(port)
            {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    anyhow::ensure!(!inodes.is_empty(), "nothing listens on port {port}");
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| link.to_str() == Some(i.as_str()))
            {
                return Ok(pid);
            }
        }
    }
    None.with_context(|| format!("no process of ours owns the listener on port {port}"))
}
