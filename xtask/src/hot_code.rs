//! `cargo xtask hot-code`: writes `app/hot-code.ld`, the linker script that lays the
//! functions the service runs at all (start-up, requests, the background loops) out
//! together at the front of its code, ahead of the rest.
//!
//! Why: the kernel maps a program's code in by the block around each page it first runs
//! (fault-around), so code that runs once at start-up keeps its neighbours resident too.
//! Linked in the compiler's order, the functions a service runs are spread over its whole
//! text, and most of the text stays resident (about 12 of 16 MB). Gathered, the blocks
//! mapped are mostly code that runs.
//!
//! How: the release binary runs under valgrind's callgrind on both backends through the
//! order journey and its edges (products, reads, placements approved and declined, a
//! cancel, a dispatch and a delivery, errors); every function it executed becomes a
//! pattern of input sections (`-ffunction-sections`: one section per function). The
//! patterns leave out the hashes of the mangled names, which change with a crate's
//! features, a dependency's version or the compiler: the script stays valid across
//! builds, at the cost of taking every instance of a generic function whose instance ran.
//! A function that is no longer there matches nothing; one that is new is laid out with
//! the rest until the script is written again.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::harness::{self, Launch};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// PostgreSQL server (loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    pg_host: String,
    #[arg(long, default_value_t = 5432)]
    pg_port: u16,
}

/// The script, relative to the workspace; `app/build.rs` hands it to the linker.
pub(crate) const SCRIPT: &str = "app/hot-code.ld";

pub(crate) fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    harness::loopback_only(&args.pg_host)?;
    let valgrind = Command::new("valgrind").arg("--version").output();
    if !valgrind.is_ok_and(|o| o.status.success()) {
        bail!("valgrind is needed (Debian: apt-get install valgrind)");
    }
    // Profiled as the compiler lays it out: valgrind 3.19 names no function outside an
    // object's `.text`, so a binary built with the script would show most as unknown.
    // (The next build links with the new script again: the setting is part of its inputs.)
    harness::build_release(&["app"], &[("SHOP_HOT_CODE", "off")])?;
    let binary = harness::target_dir().join("release/app");
    let runtime = tokio::runtime::Runtime::new()?;
    let mut ran = Vec::new();
    for backend in ["postgres", "sqlite"] {
        let functions = runtime.block_on(profile(root, args, &binary, backend))?;
        eprintln!(
            "hot-code: {backend}: {} functions of ours ran",
            functions.len()
        );
        // Thousands run on any path through the journey; a handful means the profile
        // could not name the binary's functions.
        anyhow::ensure!(
            functions.len() >= 1_000,
            "the profile on {backend} names only {} functions of {}",
            functions.len(),
            binary.display()
        );
        ran.push((backend, functions));
    }
    let groups = groups(&ran);
    let path = root.join(SCRIPT);
    std::fs::write(&path, script(&groups))
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "hot-code: {} patterns written to {SCRIPT}; build again to use them",
        groups.iter().map(|(_, p)| p.len()).sum::<usize>()
    );
    Ok(())
}

/// The patterns in the order they are laid out: what ran on every backend first, then
/// what ran on one backend only, each backend's together, so that a process on one
/// backend finds the code it runs in one stretch. A pattern appears once, in its first
/// group.
fn groups(ran: &[(&str, BTreeSet<String>)]) -> Vec<(String, Vec<String>)> {
    let everywhere: BTreeSet<&str> = ran
        .iter()
        .map(|(_, f)| f.iter().map(String::as_str).collect::<BTreeSet<_>>())
        .reduce(|a, b| a.intersection(&b).copied().collect())
        .unwrap_or_default();
    let mut seen = BTreeSet::new();
    let mut groups = Vec::new();
    let mut add = |label: String, functions: Vec<&str>| {
        let fresh: Vec<String> = patterns(functions.into_iter())
            .into_iter()
            .filter(|p| seen.insert(p.clone()))
            .collect();
        groups.push((label, fresh));
    };
    add(
        "run on every backend".into(),
        everywhere.iter().copied().collect(),
    );
    for (backend, functions) in ran {
        let only = functions
            .iter()
            .map(String::as_str)
            .filter(|f| !everywhere.contains(f))
            .collect();
        add(format!("run on {backend} only"), only);
    }
    groups
}

/// Runs `binary` under callgrind on `backend` through the journey; the mangled names of
/// the functions of `binary` that ran.
async fn profile(
    root: &Path,
    args: &Args,
    binary: &Path,
    backend: &str,
) -> anyhow::Result<BTreeSet<String>> {
    let scratch = tempfile::tempdir()?;
    let out = scratch.path().join("callgrind.out");
    let database = "shop_hot_code";
    let mut vars: Vec<(String, String)> = vec![("APP__DATABASE__BACKEND".into(), backend.into())];
    if backend == "postgres" {
        harness::create_database(&args.pg_host, args.pg_port, database).await?;
        vars.extend([
            ("APP__DATABASE__POSTGRES__HOST".into(), args.pg_host.clone()),
            (
                "APP__DATABASE__POSTGRES__PORT".into(),
                args.pg_port.to_string(),
            ),
            ("APP__DATABASE__POSTGRES__DATABASE".into(), database.into()),
            ("APP__DATABASE__POSTGRES__SSL_MODE".into(), "disable".into()),
        ]);
    } else {
        vars.push((
            "APP__DATABASE__SQLITE__DIR".into(),
            scratch.path().join("data").display().to_string(),
        ));
    }
    let port = harness::free_port()?;
    let log = scratch.path().join("service.log");
    let mut process = Launch {
        path: "valgrind".into(),
        args: vec![
            "--tool=callgrind".into(),
            "--dump-instr=no".into(),
            "--demangle=no".into(),
            "--compress-strings=no".into(),
            format!("--callgrind-out-file={}", out.display()),
            binary.display().to_string(),
        ],
        cwd: root.to_owned(),
        vars: &vars,
        port,
        log: Some(&log),
    }
    .start()?;
    let exercised = exercise(port).await;
    // Under valgrind a graceful stop takes a while; callgrind writes its file at exit.
    let stopped = process.terminate(Duration::from_secs(120));
    if backend == "postgres" {
        harness::drop_database(&args.pg_host, args.pg_port, database).await;
    }
    exercised.with_context(|| format!("the journey on {backend} (log: {})", log.display()))?;
    anyhow::ensure!(
        stopped,
        "the service did not stop within 120 s under valgrind"
    );
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    let name = binary
        .file_name()
        .and_then(|n| n.to_str())
        .context("the binary's name")?;
    Ok(executed(&text, name))
}

/// Everything a running service does once at least: start, products, reads, placements
/// approved and declined, the journey to a shipment, a cancel, a dispatch and a delivery,
/// the probes, the API document, and the errors a client meets.
async fn exercise(port: u16) -> anyhow::Result<()> {
    let client = harness::client_builder()?
        .timeout(Duration::from_secs(60))
        .build()?;
    let base = format!("http://127.0.0.1:{port}");
    harness::wait_ready_within(&client, port, Duration::from_secs(300)).await?;
    let skus: Vec<String> = (0..3).map(|i| format!("HOT-{i:05}")).collect();
    harness::create_products(&client, port, &skus, 1_000_000).await?;
    harness::wait_priced(&client, port, &skus, Duration::from_secs(120)).await?;
    for sku in skus.iter().chain([&"HOT-MISSING".to_owned()]) {
        client
            .get(format!("{base}/api/catalog/products/{sku}"))
            .send()
            .await?;
    }
    let mut placed = Vec::new();
    for i in 0..24 {
        let token = if i % 6 == 5 { "tok_decline" } else { "tok_ok" };
        let order = harness::order_body(i, &skus[i % skus.len()], 1 + (i as i64 % 3), token);
        let r = client
            .post(format!("{base}/api/checkout/orders"))
            .header("Idempotency-Key", format!("hot-{i}"))
            .json(&order)
            .send()
            .await?;
        anyhow::ensure!(r.status().as_u16() == 201, "placing: {}", r.status());
        let body: serde_json::Value = r.json().await?;
        placed.push((
            body["id"].as_str().context("an order id")?.to_owned(),
            token,
        ));
    }
    // an order cancelled, one of the rest dispatched and delivered once shipped
    let (cancelled, _) = &placed[0];
    client
        .post(format!("{base}/api/checkout/orders/{cancelled}/cancel"))
        .send()
        .await?;
    let deadline = Instant::now() + Duration::from_secs(240);
    for (id, token) in &placed[1..] {
        loop {
            let order = get_json(&client, format!("{base}/api/checkout/orders/{id}")).await?;
            let status = order["status"].as_str().unwrap_or_default();
            let done = match *token {
                "tok_decline" => status == "rejected",
                _ => status == "confirmed" && shipment(&client, &base, id).await?.is_some(),
            };
            if done {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "order {id} stayed {status}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let shipped = shipment(&client, &base, &placed[1].0)
        .await?
        .context("a shipment")?;
    for step in ["dispatch", "deliver", "deliver"] {
        client
            .post(format!("{base}/api/fulfillment/shipments/{shipped}/{step}"))
            .send()
            .await?;
    }
    for path in [
        "/healthz",
        "/readyz",
        "/api/openapi.json",
        "/api/no-such-route",
    ] {
        client.get(format!("{base}{path}")).send().await?;
    }
    // a body that is not an order, and one whose fields are wrong
    for body in [
        json!([1]),
        json!({"customer_email": "not-an-email", "items": []}),
    ] {
        client
            .post(format!("{base}/api/checkout/orders"))
            .json(&body)
            .send()
            .await?;
    }
    Ok(())
}

async fn shipment(
    client: &reqwest::Client,
    base: &str,
    order: &str,
) -> anyhow::Result<Option<String>> {
    let page = get_json(
        client,
        format!("{base}/api/fulfillment/shipments?order_id={order}"),
    )
    .await?;
    Ok(page["items"][0]["id"].as_str().map(str::to_owned))
}

async fn get_json(client: &reqwest::Client, url: String) -> anyhow::Result<serde_json::Value> {
    Ok(client.get(url).send().await?.json().await?)
}

/// The functions of the object whose file is named `binary` that a callgrind profile
/// (written with `--compress-strings=no --demangle=no`) records as run.
fn executed(profile: &str, binary: &str) -> BTreeSet<String> {
    let mut ours = false;
    let mut functions = BTreeSet::new();
    for line in profile.lines() {
        if let Some(object) = line.strip_prefix("ob=") {
            ours = Path::new(object.trim())
                .file_name()
                .and_then(|n| n.to_str())
                == Some(binary);
        } else if let Some(function) = line.strip_prefix("fn=")
            && ours
        {
            // callgrind marks a recursion's deeper levels with 'N
            let name = function.trim().split('\'').next().unwrap_or_default();
            if !name.is_empty() && !name.starts_with("0x") {
                functions.insert(name.to_owned());
            }
        }
    }
    functions
}

/// A glob per function that matches its section whatever the hashes of its mangled name:
/// the legacy scheme's trailing `17h<16 hex digits>E`, and the v0 scheme's crate
/// disambiguators (`Cs<base 62>_`). Names a linker script cannot hold are left out.
fn patterns<'a>(functions: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut patterns = BTreeSet::new();
    for name in functions {
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '.')
        {
            continue;
        }
        let mut pattern = name.to_owned();
        if let Some(stem) = legacy_stem(name) {
            pattern = format!("{stem}17h*E");
        } else if name.starts_with("_R") {
            pattern = without_crate_hashes(name);
        }
        patterns.insert(pattern);
    }
    patterns.into_iter().collect()
}

/// A legacy mangled name without its hash: `_ZN...17h0123456789abcdefE` → `_ZN...`.
fn legacy_stem(name: &str) -> Option<&str> {
    if !name.starts_with("_ZN") {
        return None;
    }
    let body = name.strip_suffix('E')?;
    let (stem, hash) = body.split_at_checked(body.len().checked_sub(19)?)?;
    let digits = hash.strip_prefix("17h")?;
    digits
        .chars()
        .all(|c| c.is_ascii_hexdigit())
        .then_some(stem)
}

/// A v0 mangled name with every crate disambiguator (`Cs<base 62>_`) made a wildcard.
fn without_crate_hashes(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find("Cs") {
        out.push_str(&rest[..at + 2]);
        let after = &rest[at + 2..];
        let hash = after
            .find(|c: char| !c.is_ascii_alphanumeric())
            .filter(|&end| end > 0 && after[end..].starts_with('_'));
        match hash {
            Some(end) => {
                out.push('*');
                rest = &after[end..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// The linker script: one output section ahead of `.text` holding every function that
/// matches a pattern (and its `.text.unlikely.` twin), group after group, the rest of the
/// layout the linker's own (`INSERT`, which both GNU ld and lld understand).
fn script(groups: &[(String, Vec<String>)]) -> String {
    let mut s = String::from(
        "/* Written by `cargo xtask hot-code` (xtask/src/hot_code.rs): the functions the service\n   \
         runs, laid out together ahead of the rest of its code so that fewer pages of it are\n   \
         resident. app/build.rs hands this file to the linker. Write it again after large\n   \
         changes: a function missing here is still linked, only elsewhere. */\n\
         SECTIONS\n{\n  .text.hot : {\n",
    );
    for (label, patterns) in groups {
        s.push_str(&format!("    /* {label} */\n"));
        for p in patterns {
            s.push_str(&format!("    *(.text.{p} .text.unlikely.{p})\n"));
        }
    }
    s.push_str("  }\n}\nINSERT BEFORE .text;\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_legacy_name_loses_its_hash_and_a_v0_name_its_crate_disambiguators() {
        let names = [
            "_ZN5tokio7runtime4task3raw4poll17h0123456789abcdefE",
            "_ZN5tokio7runtime4task3raw4poll17hfedcba9876543210E",
            "_RNvNtCslNYArtu3iFV_5alloc7raw_vec11finish_grow",
            "_rjem_je_malloc_default",
            "weird name(with)",
        ];
        assert_eq!(
            patterns(names.into_iter()),
            [
                "_RNvNtCs*_5alloc7raw_vec11finish_grow",
                "_ZN5tokio7runtime4task3raw4poll17h*E",
                "_rjem_je_malloc_default",
            ]
        );
    }

    #[test]
    fn only_the_named_binarys_functions_are_read_from_a_profile() {
        let profile = "ob=/usr/lib/libc.so.6\nfn=memcpy\n\
                       ob=/tmp/t/release/app\nfn=_ZN3app4main17h0123456789abcdefE\n\
                       fn=_ZN3app4main17h0123456789abcdefE'2\nfn=0x0000000000401000\n\
                       ob=/tmp/t/release/app-other\nfn=_ZN5other17h0123456789abcdefE\n";
        assert_eq!(
            executed(profile, "app").into_iter().collect::<Vec<_>>(),
            ["_ZN3app4main17h0123456789abcdefE"]
        );
    }

    #[test]
    fn the_script_puts_each_pattern_and_its_unlikely_twin_ahead_of_text() {
        let s = script(&[("run".to_owned(), vec!["_ZN3app4main17h*E".to_owned()])]);
        assert!(s.contains("*(.text._ZN3app4main17h*E .text.unlikely._ZN3app4main17h*E)"));
        assert!(s.trim_end().ends_with("INSERT BEFORE .text;"));
    }

    #[test]
    fn what_ran_everywhere_comes_first_then_each_backends_own_once() {
        let set = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect();
        let ran = [
            (
                "postgres",
                set(&["both", "pg", "_ZN1a17h0000000000000001E"]),
            ),
            (
                "sqlite",
                set(&["both", "lite", "_ZN1a17h0000000000000002E"]),
            ),
        ];
        let groups = groups(&ran);
        let names: Vec<(&str, Vec<&str>)> = groups
            .iter()
            .map(|(l, p)| (l.as_str(), p.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            names,
            [
                ("run on every backend", vec!["both"]),
                ("run on postgres only", vec!["_ZN1a17h*E", "pg"]),
                ("run on sqlite only", vec!["lite"]),
            ]
        );
    }
}
