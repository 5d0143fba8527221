//! The load generator: plain HTTP/1.1 over keep-alive loopback connections, written by hand
//! so that it costs little beside the server it measures (both share the machine's cores).
//!
//! `connections` tasks on a runtime of `threads` threads each send one request, read its
//! whole response (Content-Length or chunked), record the latency and send the next, until
//! the deadline; optionally paced to a total rate. Latencies are kept in microseconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one request of a scenario is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// `GET /api/catalog/products/SKU-nnnnn`, a product chosen at random.
    Read,
    /// `POST /api/checkout/orders`, one unit of a product chosen at random.
    Place,
}

impl Request {
    fn expected(self) -> u16 {
        match self {
            Self::Read => 200,
            Self::Place => 201,
        }
    }

    /// The request's bytes; `authorization` is sent with a placement (the peer ignores it).
    fn bytes(self, products: usize, n: u64, authorization: &str, out: &mut Vec<u8>) {
        out.clear();
        let sku = fastrand::usize(0..products);
        match self {
            Self::Read => out.extend_from_slice(
                format!(
                    "GET /api/catalog/products/SKU-{sku:05} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                )
                .as_bytes(),
            ),
            Self::Place => {
                let body = format!(
                    concat!(
                        r#"{{"customer_email":"load{}@example.com","items":[{{"sku":"SKU-{:05}","quantity":1}}],"#,
                        r#""shipping_address":{{"name":"Load","line1":"1 Load St","city":"Loopback","postal_code":"127","country":"GB"}},"#,
                        r#""payment_token":"tok_visa"}}"#
                    ),
                    n, sku
                );
                out.extend_from_slice(
                    format!(
                        "POST /api/checkout/orders HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                         Authorization: {authorization}\r\n\
                         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        }
    }
}

/// A run of load against one server.
#[derive(Clone, Debug)]
pub(crate) struct Load {
    pub(crate) port: u16,
    pub(crate) request: Request,
    pub(crate) connections: usize,
    pub(crate) products: usize,
    /// The `Authorization` header's value for placements.
    pub(crate) authorization: std::sync::Arc<str>,
    /// Requests per second in total; `None`: each connection sends as fast as answered.
    pub(crate) rate: Option<f64>,
    pub(crate) duration: Duration,
}

/// What a run measured.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Latencies of the answers with the expected status, in microseconds.
    pub(crate) latencies_us: Vec<u32>,
    /// Answers with another status, and connections that failed.
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) elapsed: Duration,
}

/// Requests answered so far by every run in this process (for progress lines).
pub(crate) static DONE: AtomicU64 = AtomicU64::new(0);
/// Requests sent so far (numbers the order bodies, so every order is distinct).
static SENT: AtomicU64 = AtomicU64::new(0);

pub(crate) async fn run(load: Load) -> Outcome {
    let started = Instant::now();
    let deadline = started + load.duration;
    let load = Arc::new(load);
    let mut tasks = Vec::new();
    for i in 0..load.connections {
        let load = load.clone();
        tasks.push(tokio::spawn(async move {
            connection(&load, i, started, deadline).await
        }));
    }
    let mut outcome = Outcome::default();
    for task in tasks {
        match task.await {
            Ok(c) => {
                outcome.latencies_us.extend(c.latencies_us);
                outcome.errors += c.errors;
                if outcome.first_error.is_none() {
                    outcome.first_error = c.first_error;
                }
            }
            Err(e) => {
                outcome.errors += 1;
                outcome.first_error.get_or_insert(e.to_string());
            }
        }
    }
    outcome.elapsed = started.elapsed();
    outcome
}

async fn connection(load: &Load, index: usize, started: Instant, deadline: Instant) -> Outcome {
    let mut out = Outcome::default();
    let mut conn: Option<Conn> = None;
    let mut request = Vec::with_capacity(512);
    // Paced: this connection's share of the rate, its first slot spread over one interval.
    let interval = load
        .rate
        .map(|r| Duration::from_secs_f64(load.connections as f64 / r));
    let mut next = interval.map(|i| started + i.mul_f64(index as f64 / load.connections as f64));
    loop {
        if let (Some(at), Some(i)) = (next.as_mut(), interval) {
            if *at >= deadline {
                break;
            }
            tokio::time::sleep_until((*at).into()).await;
            *at += i;
        }
        if Instant::now() >= deadline {
            break;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(load.port).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    out.errors += 1;
                    out.first_error.get_or_insert(format!("{e:#}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let n = SENT.fetch_add(1, Ordering::Relaxed);
        load.request
            .bytes(load.products, n, &load.authorization, &mut request);
        let t = Instant::now();
        match c.exchange(&request).await {
            Ok(status) if status == load.request.expected() => {
                out.latencies_us
                    .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                DONE.fetch_add(1, Ordering::Relaxed);
            }
            Ok(status) => {
                out.errors += 1;
                out.first_error
                    .get_or_insert(format!("answered {status}: {}", c.body_text()));
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(format!("{e:#}"));
                conn = None;
            }
        }
    }
    out
}

/// One keep-alive connection and its read buffer.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The body of the last response.
    body: std::ops::Range<usize>,
}

impl Conn {
    pub(crate) async fn open(port: u16) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
            body: 0..0,
        })
    }

    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.buf[self.body.clone()])
            .chars()
            .take(300)
            .collect()
    }

    /// Sends `request`, reads one whole response, returns its status.
    pub(crate) async fn exchange(&mut self, request: &[u8]) -> anyhow::Result<u16> {
        self.stream.write_all(request).await?;
        self.buf.clear();
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("response head")?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status in the response")?;
        let mut length = None;
        let mut chunked = false;
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.trim().parse::<usize>()?);
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            }
        }
        if let Some(length) = length {
            while self.buf.len() < head_end + length {
                self.fill().await?;
            }
            self.body = head_end..head_end + length;
        } else if chunked {
            let mut at = head_end;
            loop {
                let line_end = loop {
                    if let Some(p) = find(&self.buf[at..], b"\r\n") {
                        break at + p;
                    }
                    self.fill().await?;
                };
                let size_text = std::str::from_utf8(&self.buf[at..line_end])?;
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .context("chunk size")?;
                let end = line_end + 2 + size + 2;
                while self.buf.len() < end {
                    self.fill().await?;
                }
                at = end;
                if size == 0 {
                    break;
                }
            }
            self.body = head_end..at;
        } else {
            bail!("a response with neither Content-Length nor chunked body");
        }
        Ok(status)
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let len = self.buf.len();
        self.buf.resize(len + 4096, 0);
        let n = self.stream.read(&mut self.buf[len..]).await?;
        self.buf.truncate(len + n);
        if n == 0 {
            bail!("the server closed the connection");
        }
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Opens `count` keep-alive connections (a few hundred at a time), makes one request
/// (`GET /healthz`) on each so the server has set each one up, and returns them open.
pub(crate) async fn idle_connections(port: u16, count: usize) -> anyhow::Result<Vec<Conn>> {
    use futures::StreamExt;
    let request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let opened: Vec<anyhow::Result<Conn>> = futures::stream::iter(0..count)
        .map(|_| async move {
            let mut c = Conn::open(port).await?;
            let status = c.exchange(request).await?;
            anyhow::ensure!(status == 200, "/healthz answered {status}");
            Ok(c)
        })
        .buffer_unordered(200)
        .collect()
        .await;
    opened.into_iter().collect()
}
