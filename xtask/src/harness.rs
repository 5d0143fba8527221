//! What the load commands (`bench`, `soak`) share: building and starting the release
//! binaries on loopback ports, databases for a run, seeding products, placing orders over
//! HTTP, and small statistics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sea_orm::{ConnectionTrait, Database};
use serde_json::json;

pub(crate) fn loopback_only(host: &str) -> anyhow::Result<()> {
    if !matches!(host, "127.0.0.1" | "localhost" | "::1") {
        bail!("load tests run against loopback addresses only, not {host}");
    }
    Ok(())
}

/// `cargo build --release` of `packages`, with `vars` set for the build.
pub(crate) fn build_release(packages: &[&str], vars: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(["build", "--release", "--quiet"])
        .envs(vars.iter().copied());
    for p in packages {
        command.args(["-p", p]);
    }
    let status = command.status().context("cargo build")?;
    anyhow::ensure!(status.success(), "the release build failed");
    Ok(())
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| crate::workspace_root().join("target"))
}

/// A client for the processes the harness starts (`APP_ENVIRONMENT=local`, the repository's
/// `config/`, whose issuer and audience an extracted service's configuration copies): each
/// request carries a token of the local development secret with the customer and the staff
/// role, as a shop's storefront and back office together would, unless it sets its own.
pub(crate) fn client_builder() -> anyhow::Result<reqwest::ClientBuilder> {
    let mut value = reqwest::header::HeaderValue::from_str(&authorization()?)?;
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(module_api::tls::client_builder(None)?.default_headers(headers))
}

/// The `Authorization` value [`client_builder`] sends: `Bearer` and a token of the local
/// development secret with the customer and the staff role.
pub(crate) fn authorization() -> anyhow::Result<String> {
    let settings = runtime::config::Settings::load(runtime::config::Sources {
        dir: &crate::workspace_root().join("config"),
        environment: "local",
        env_vars: Some(Default::default()),
    })?;
    let roles = [module_api::Role::Customer, module_api::Role::Staff];
    let token = runtime::auth::mint(&settings, &roles, "harness", Duration::from_secs(86_400))?;
    Ok(format!("Bearer {token}"))
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A process of ours, stopped (SIGTERM, then SIGKILL after 15 s) when dropped, so a
/// command that stops early leaves nothing running.
pub(crate) struct Process(pub(crate) Child);

impl Process {
    /// Kills the process at once (SIGKILL), as a crash would, and reaps it.
    pub(crate) fn kill_now(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Asks the process to stop (SIGTERM) and waits up to `within` for it.
    pub(crate) fn terminate(&mut self, within: Duration) -> bool {
        if let Ok(Some(_)) = self.0.try_wait() {
            return true;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Whether the process has ended.
    pub(crate) fn exited(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A reaped process's id may belong to someone else by now: signal only a live one.
        if !self.terminate(Duration::from_secs(15)) {
            self.kill_now();
        }
    }
}

/// How to start one process of ours.
pub(crate) struct Launch<'a> {
    pub(crate) path: PathBuf,
    /// Its arguments (a wrapper's, such as valgrind's, then the binary's path).
    pub(crate) args: Vec<String>,
    pub(crate) cwd: PathBuf,
    pub(crate) vars: &'a [(String, String)],
    /// The loopback port to serve on (a restart reuses its predecessor's).
    pub(crate) port: u16,
    /// Where stderr goes; inherited when unset.
    pub(crate) log: Option<&'a Path>,
}

impl Launch<'_> {
    pub(crate) fn start(&self) -> anyhow::Result<Process> {
        let mut command = Command::new(&self.path);
        command
            .args(&self.args)
            .current_dir(&self.cwd)
            .env("APP_ENVIRONMENT", "local")
            .env("APP__SERVER__HOST", "127.0.0.1")
            .env("APP__SERVER__PORT", self.port.to_string())
            // the metrics port: a free one, so several processes run side by side
            .env("APP__SERVER__ADMIN_PORT", "0")
            .env("APP__TELEMETRY__LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        match self.log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                command.stderr(file.try_clone()?).stdout(file);
            }
            None => {
                command.stderr(Stdio::inherit());
            }
        }
        for (k, v) in self.vars {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .with_context(|| format!("failed to start {}", self.path.display()))?;
        Ok(Process(child))
    }
}

pub(crate) async fn wait_ready_within(
    client: &reqwest::Client,
    port: u16,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the service on port {port} did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn create_database(host: &str, port: u16, name: &str) -> anyhow::Result<()> {
    let admin = Database::connect(format!("postgres://postgres@{host}:{port}/postgres")).await?;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await?;
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await?;
    admin.close().await?;
    Ok(())
}

pub(crate) async fn drop_database(host: &str, port: u16, name: &str) {
    if let Ok(admin) =
        Database::connect(format!("postgres://postgres@{host}:{port}/postgres")).await
    {
        let _ = admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
        let _ = admin.close().await;
    }
}

/// Creates one product per sku with `stock` units each.
pub(crate) async fn create_products(
    client: &reqwest::Client,
    catalog: u16,
    skus: &[String],
    stock: i64,
) -> anyhow::Result<()> {
    for sku in skus {
        let r = client
            .post(format!("http://127.0.0.1:{catalog}/api/catalog/products"))
            .json(&json!({"sku": sku, "name": sku, "price_minor": 100, "currency": "EUR", "initial_stock": stock}))
            .send()
            .await?;
        anyhow::ensure!(r.status().as_u16() == 201, "creating {sku}: {}", r.status());
    }
    Ok(())
}

/// Waits until checkout has a price for every sku (it learns them from catalog's events).
pub(crate) async fn wait_priced(
    client: &reqwest::Client,
    checkout: u16,
    skus: &[String],
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    for sku in skus {
        loop {
            let r = client
                .get(format!(
                    "http://127.0.0.1:{checkout}/api/checkout/prices/{sku}"
                ))
                .send()
                .await?;
            if r.status().is_success() {
                break;
            }
            if Instant::now() > deadline {
                bail!("checkout never priced {sku}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// The body of an order for `quantity` units of `sku`, paid with `token`.
pub(crate) fn order_body(i: usize, sku: &str, quantity: i64, token: &str) -> serde_json::Value {
    json!({
        "customer_email": format!("customer{i}@example.com"),
        "items": [{"sku": sku, "quantity": quantity}],
        "shipping_address": {"name": "Load", "line1": "1 Load St", "city": "Loopback",
                             "postal_code": "127", "country": "GB"},
        "payment_token": token,
    })
}

pub(crate) fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank.min(values.len() - 1)]
}

/// fulfillment as a service of its own: a real `cargo xtask extract fulfillment` in a
/// scratch copy of this workspace, built in release mode (skipped with `no_build` when a
/// binary is already there). Returns the copy (the service runs in it) and the binary.
pub(crate) fn extracted_service(no_build: bool) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let scratch = crate::scratch::copy_workspace(&crate::workspace_root())?;
    crate::extract::extract(
        scratch.path(),
        &crate::extract::Args {
            module: "fulfillment".into(),
            dry_run: false,
            force: false,
        },
    )?;
    // The workspace's own target folder: the scratch copy pins the same versions, so its
    // release build reuses every dependency the app's release build already compiled.
    let scratch_target = target_dir();
    let binary = scratch_target.join("release/fulfillment-service");
    if !no_build || !binary.is_file() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(scratch.path())
            .env("CARGO_TARGET_DIR", &scratch_target)
            .args(["build", "--release", "--quiet", "-p", "fulfillment-service"])
            .status()?;
        anyhow::ensure!(status.success(), "building fulfillment-service failed");
    }
    Ok((scratch, binary))
}

/// Deletes every key of `namespace` in the Redis at `url`, so a run leaves nothing behind.
pub(crate) async fn clear_namespace(url: &str, namespace: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}
