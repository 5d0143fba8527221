//! What an idle keep-alive connection costs, read off the real binary: the HTTP server frees
//! a connection's read and write buffers while nothing is in flight (actix-http as published
//! keeps two 8 KiB buffers for the connection's whole life; the copy under `vendor/` frees
//! them), and a connection whose buffers were freed serves its next request as before; and
//! the binary raises a low open-file limit at start, so it accepts as many connections as the
//! system allows, not a distribution's default of about a thousand.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle connections opened at once; each answers one request first.
const CONNECTIONS: usize = 2_000;

/// The process's resident memory may grow by less than this per idle connection (what is
/// left is the connection's dispatcher and its socket's registration, about 2 KiB); with
/// the buffers kept it grows by about 10 KiB (one touched page of each buffer).
const MOST_BYTES_PER_CONNECTION: u64 = 4 * 1024;

/// The real binary on the embedded default, killed when dropped.
struct Server {
    child: Child,
    address: String,
    /// What it logged before it listened.
    started: Vec<serde_json::Value>,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary, under a soft open-file limit of `soft_open_files` when given (set by
/// the shell that execs it, as a distribution's default would be).
fn start(soft_open_files: Option<u64>) -> Server {
    let data = tempfile::tempdir().expect("temp dir");
    let command = match soft_open_files {
        Some(limit) => {
            let mut shell = Command::new("sh");
            shell
                .arg("-c")
                .arg(format!("ulimit -Sn {limit} && exec \"$0\""))
                .arg(env!("CARGO_BIN_EXE_app"));
            shell
        }
        None => Command::new(env!("CARGO_BIN_EXE_app")),
    };
    let directory = data.path().to_str().expect("utf-8 path");
    let mut child = crate::basics::configured(
        command,
        &[
            ("APP__SERVER__PORT", "0"),
            ("APP__SERVER__ADMIN_PORT", "0"),
            ("APP__DATABASE__SQLITE__DIR", directory),
        ],
    )
    .stderr(Stdio::null())
    .spawn()
    .expect("the binary starts");
    let started = crate::basics::until_listening(&mut child);
    // Keep reading what it logs, so a full pipe never blocks it.
    let rest = started.rest;
    std::thread::spawn(move || rest.for_each(drop));
    let address = started.listening["address"]
        .as_str()
        .expect("address")
        .trim_start_matches("http://")
        .to_owned();
    Server {
        child,
        address,
        started: started.before,
        _data: data,
    }
}

/// Makes room for `connections` client sockets in this process (and in the children it
/// starts, which inherit the limit): the server's own raise, up to the hard limit.
fn room_for(connections: usize) {
    let limit = runtime::host::raise_open_file_limit();
    assert!(
        limit >= connections as u64 + 1_000,
        "the open-file limit ({limit}) is below {connections} connections"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The process's resident memory, in bytes.
fn resident(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// Reads one response off `stream` (this server answers with a Content-Length) and returns
/// its status and body.
async fn response(stream: &mut TcpStream, pending: &mut Vec<u8>) -> (u16, String) {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if pending.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&pending[end + 4..end + 4 + length]).to_string();
                pending.drain(..end + 4 + length);
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .expect("a status line");
                return (status, body);
            }
        }
        let mut buffer = [0u8; 4096];
        let n = stream.read(&mut buffer).await.expect("read");
        assert!(n > 0, "the server closed the connection mid-response");
        pending.extend_from_slice(&buffer[..n]);
    }
}

const HEALTH: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// Opens a connection and has it answer one request.
async fn answered_once(address: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(HEALTH).await.expect("write");
    let (status, _) = response(&mut stream, &mut Vec::new()).await;
    assert_eq!(status, 200);
    stream
}

#[test]
fn idle_keep_alive_connections_hold_no_buffers_and_serve_their_next_request() {
    room_for(CONNECTIONS);
    let server = start(None);
    let pid = server.child.id();
    runtime().block_on(async {
        // Every worker has served requests before the reading is taken.
        for _ in 0..50 {
            drop(answered_once(&server.address).await);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = resident(pid);

        let mut idle = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS / 100 {
            let batch = (0..100).map(|_| answered_once(&server.address));
            idle.extend(futures::future::join_all(batch).await);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = resident(pid);
        let per_connection = after.saturating_sub(before) / CONNECTIONS as u64;
        assert!(
            per_connection < MOST_BYTES_PER_CONNECTION,
            "{CONNECTIONS} idle keep-alive connections cost {per_connection} bytes each \
             (resident {before} bytes before, {after} after): a connection keeps its buffers \
             while it idles"
        );

        // Every one of them serves its next request with buffers allocated anew.
        for stream in idle.iter_mut().step_by(10) {
            stream.write_all(HEALTH).await.expect("write");
            assert_eq!(response(stream, &mut Vec::new()).await.0, 200);
        }
        // Two requests in one write: the second waits in the read buffer while the first is
        // answered, and is answered from it.
        let stream = &mut idle[1];
        stream
            .write_all(&[HEALTH, HEALTH].concat())
            .await
            .expect("write");
        let mut pending = Vec::new();
        assert_eq!(response(stream, &mut pending).await.0, 200);
        assert_eq!(response(stream, &mut pending).await.0, 200);
        // A request whose head arrives in two parts with a pause between: the first part is
        // kept while the connection waits for the rest.
        let stream = &mut idle[2];
        stream.write_all(&HEALTH[..20]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.write_all(&HEALTH[20..]).await.expect("write");
        assert_eq!(response(stream, &mut Vec::new()).await.0, 200);
        // A request whose head is larger than the read buffer's first allocation.
        let request = format!(
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Padding: {}\r\n\r\n",
            "x".repeat(12_000)
        );
        let stream = &mut idle[3];
        stream.write_all(request.as_bytes()).await.expect("write");
        assert_eq!(response(stream, &mut Vec::new()).await.0, 200);
        stream.write_all(HEALTH).await.expect("write");
        assert_eq!(response(stream, &mut Vec::new()).await.0, 200);
    });
}

/// Under a soft open-file limit of 256 (a distribution's default is 1,024) the binary raises
/// its own to the hard limit at start, says so, and serves more connections at once than
/// the limit it was started with would let it accept.
#[test]
fn a_low_open_file_limit_is_raised_at_start_so_connections_beyond_it_are_served() {
    const LIMIT: u64 = 256;
    const HELD: usize = 600;
    room_for(HELD);
    let server = start(Some(LIMIT));
    let raised = server
        .started
        .iter()
        .find(|r| r["msg"] == "open-file limit raised to the hard limit")
        .unwrap_or_else(|| panic!("no line says the limit was raised: {:?}", server.started));
    assert_eq!(raised["was"], LIMIT);
    assert!(raised["open_files"].as_u64().expect("open_files") >= HELD as u64 + 1_000);

    runtime().block_on(async {
        let mut held = Vec::with_capacity(HELD);
        for _ in 0..HELD / 100 {
            let batch = (0..100).map(|_| {
                tokio::time::timeout(Duration::from_secs(10), answered_once(&server.address))
            });
            for answered in futures::future::join_all(batch).await {
                held.push(answered.unwrap_or_else(|_| {
                    panic!(
                        "connection {} of {HELD} held at once was not answered within 10 s",
                        held.len() + 1
                    )
                }));
            }
        }
        assert_eq!(held.len(), HELD);
    });
}
