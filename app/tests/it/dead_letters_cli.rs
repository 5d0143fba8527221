//! `app dead-letters`: the real binary, pointed at a running app's database, lists, shows,
//! replays and discards that app's dead letters, on SQLite and PostgreSQL; the running
//! app's consumer picks up the replay.

use std::process::Output;

use messaging::Faults;
use runtime::config::{Backend as RuntimeBackend, Settings};
use runtime::host::Hooks;
use serde_json::Value;
use testkit::{Backend, Spawn, eventually, json, on_both_backends};
use tokio::process::Command;

use crate::shop::{Shop, WAIT};

on_both_backends!(the_command_line_lists_shows_replays_and_discards_dead_letters);

/// Runs `app dead-letters <args>` on the database `settings` point at.
async fn dead_letters(settings: &Settings, args: &[&str]) -> Output {
    let db = &settings.database;
    let mut command = Command::new(env!("CARGO_BIN_EXE_app"));
    command
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env_remove("RUST_LOG")
        .env("APP_ENVIRONMENT", "test")
        .env("USER", "someone")
        .arg("dead-letters")
        .args(args);
    match db.backend {
        RuntimeBackend::Sqlite => {
            command
                .env("APP__DATABASE__BACKEND", "sqlite")
                .env("APP__DATABASE__SQLITE__DIR", &db.sqlite.dir);
        }
        RuntimeBackend::Postgres => {
            let pg = &db.postgres;
            command
                .env("APP__DATABASE__BACKEND", "postgres")
                .env("APP__DATABASE__POSTGRES__HOST", &pg.host)
                .env("APP__DATABASE__POSTGRES__PORT", pg.port.to_string())
                .env("APP__DATABASE__POSTGRES__OWNER_USER", &pg.owner_user)
                .env("APP__DATABASE__POSTGRES__DATABASE", &pg.database);
        }
    }
    command.output().await.expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The JSON log line with this message.
fn logged(output: &Output, msg: &str) -> Value {
    stdout(output)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["msg"] == msg)
        .unwrap_or_else(|| panic!("no log line {msg:?} in {}", stdout(output)))
}

async fn status_of(settings: &Settings, id: &str) -> String {
    let shown = dead_letters(settings, &["show", "--module", "checkout", id]).await;
    assert!(shown.status.success(), "{}", stderr(&shown));
    let text = stdout(&shown);
    // The letter is the pretty-printed object; log lines are one line each.
    let start = text.find("{\n").expect("a JSON object");
    let letter: Value = serde_json::from_str(&text[start..]).expect("the letter as JSON");
    letter["status"].as_str().expect("a status").to_owned()
}

async fn the_command_line_lists_shows_replays_and_discards_dead_letters(backend: Backend) {
    let faults = Faults::for_tests();
    let shop = Shop::on(
        Spawn::new(backend, app::modules())
            .hooks(Hooks {
                faults: faults.clone(),
                ..Hooks::default()
            })
            .start()
            .await,
    );
    // A bug makes checkout fail on every event about these two products.
    faults.fail_key("POISON-1");
    faults.fail_key("POISON-2");
    for sku in ["POISON-1", "POISON-2"] {
        shop.app
            .post(
                "/api/catalog/products",
                &json!({"sku": sku, "name": "Bad", "price_minor": 1, "currency": "EUR", "initial_stock": 1}),
            )
            .await
            .expect_status(201);
    }
    eventually(WAIT, "both events to be parked", || async {
        (shop
            .rows("checkout", "dead_letters", "status = 'dead'")
            .await
            == 2)
            .then_some(())
    })
    .await;
    let settings = &shop.app.settings;

    let listed = dead_letters(settings, &["list", "--module", "checkout"]).await;
    assert!(listed.status.success(), "{}", stderr(&listed));
    let rows: Vec<Vec<String>> = stdout(&listed)
        .lines()
        .skip_while(|l| !l.starts_with("id\t"))
        .skip(1)
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect();
    assert_eq!(rows.len(), 2, "{}", stdout(&listed));
    for row in &rows {
        assert_eq!(row[1], "dead");
        assert_eq!(row[3], "catalog.product_published.v1");
        assert!(row[5].contains("injected failure"), "{row:?}");
    }
    // The two were parked in whichever order their deliveries failed: tell them apart by
    // the product their event names.
    let mut first = rows[0][0].clone();
    let mut second = rows[1][0].clone();
    let shown = dead_letters(settings, &["show", "--module", "checkout", &first]).await;
    assert!(shown.status.success(), "{}", stderr(&shown));
    if !stdout(&shown).contains("POISON-1") {
        std::mem::swap(&mut first, &mut second);
    }
    let none = dead_letters(
        settings,
        &["list", "--module", "catalog", "--status", "dead"],
    )
    .await;
    assert!(none.status.success(), "{}", stderr(&none));
    assert!(
        stdout(&none)
            .lines()
            .skip_while(|l| !l.starts_with("id\t"))
            .nth(1)
            .is_none(),
        "catalog parked nothing: {}",
        stdout(&none)
    );

    // The fix ships; the first letter is replayed and runs in the running app.
    faults.heal();
    let replayed = dead_letters(
        settings,
        &[
            "replay",
            "--module",
            "checkout",
            &first,
            "--reason",
            "fixed in 1.2",
            "--by",
            "ada",
        ],
    )
    .await;
    assert!(replayed.status.success(), "{}", stderr(&replayed));
    let log = logged(&replayed, "dead letter replay by an operator");
    assert_eq!(log["by"], "ada");
    assert_eq!(log["reason"], "fixed in 1.2");
    assert_eq!(log["module"], "checkout");
    shop.priced("POISON-1").await;
    eventually(WAIT, "the letter to be marked replayed", || async {
        (status_of(settings, &first).await == "replayed").then_some(())
    })
    .await;

    // The second is given up on; `--by` defaults to the login name.
    let discarded = dead_letters(
        settings,
        &[
            "discard",
            "--module",
            "checkout",
            &second,
            "--reason",
            "a test product",
        ],
    )
    .await;
    assert!(discarded.status.success(), "{}", stderr(&discarded));
    assert_eq!(
        logged(&discarded, "dead letter discard by an operator")["by"],
        "someone"
    );
    assert_eq!(status_of(settings, &second).await, "discarded");
    assert_eq!(
        shop.app.get("/api/checkout/prices/POISON-2").await.status,
        404
    );

    // What cannot be done is refused, naming why, and changes nothing.
    let refusals: [(&[&str], &str); 4] = [
        (
            &["discard", "--module", "checkout", &first, "--reason", "x"],
            "is replayed",
        ),
        (
            &["replay", "--module", "checkout", "999999", "--reason", "x"],
            "no dead letter 999999",
        ),
        (
            &["list", "--module", "payments"],
            "catalog, checkout, fulfillment",
        ),
        (
            &["list", "--module", "checkout", "--status", "gone"],
            "--status",
        ),
    ];
    for (args, says) in refusals {
        let refused = dead_letters(settings, args).await;
        assert!(!refused.status.success(), "{args:?} succeeded");
        assert!(
            stderr(&refused).contains(says),
            "{args:?}: {}",
            stderr(&refused)
        );
    }
    let no_reason = dead_letters(settings, &["replay", "--module", "checkout", &second]).await;
    assert!(!no_reason.status.success());
    assert!(
        stderr(&no_reason).contains("--reason"),
        "{}",
        stderr(&no_reason)
    );
    assert_eq!(status_of(settings, &first).await, "replayed");
    assert_eq!(status_of(settings, &second).await, "discarded");
}
