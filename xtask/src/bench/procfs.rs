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

/// What `/proc/<pid>/stat` says of a process's CPU.
struct Stat {
    comm: String,
    /// User + system ticks of the process itself (all its threads).
    own: u64,
    /// User + system ticks of its children that exited and were waited for.
    children: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    // after ") ": state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17), counted
    // from field 3
    let fields: Vec<&str> = text[close + 2..].split(' ').collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(Stat {
        comm,
        own: field(14)? + field(15)?,
        children: field(16)? + field(17)?,
    })
}

/// CPU time used so far by the processes `pids`.
pub(crate) fn cpu(pids: &[u32], ticks: f64) -> Duration {
    let total: u64 = pids.iter().filter_map(|p| stat(*p)).map(|s| s.own).sum();
    Duration::from_secs_f64(total as f64 / ticks)
}

/// CPU time used so far by every process named `postgres` (the server and its backends:
/// ours, and any other client's at the time), with that of the backends that exited: the
/// postmaster's children's time holds it. (Counting only the live processes, a backend
/// that exited during a run took all the time it ever used out of the sum: a pool closing
/// an idle connection, or the previous target's connections closing, made a run's
/// PostgreSQL CPU read low, at times a third of what it was.)
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
            if let Some(stat) = stat(pid)
                && stat.comm == "postgres"
            {
                total += stat.own + stat.children;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_own_and_children_s_time() {
        let line = "4242 (postgres) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    7 3 20 9 20 0 1 0 500 1000 100 18446744073709551615";
        let stat = parse_stat(line).expect("parses");
        assert_eq!(
            (stat.comm.as_str(), stat.own, stat.children),
            ("postgres", 10, 29)
        );
    }

    /// What `postgres_cpu` relies on: the time of a child that exited and was waited for
    /// shows in its parent's children's time.
    #[test]
    fn an_exited_child_s_time_stays_with_its_parent() {
        let me = std::process::id();
        let before = stat(me).expect("own stat").children;
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .expect("sh runs");
        assert!(status.success());
        let after = stat(me).expect("own stat").children;
        assert!(after > before, "children's ticks {before} -> {after}");
    }
}
