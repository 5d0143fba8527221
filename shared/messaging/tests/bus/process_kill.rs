//! Crashes that are real: the consumer runs in a child process (this test binary, started
//! again on one test of its own) that is killed with SIGKILL while it handles an event, so
//! nothing is rolled back, handed back or flushed by the code under test, and its
//! connections to the databases and to Redis simply drop. An event that kills its consumer
//! every time is parked after `max_attempts` deliveries, while events of other keys flow:
//! whether it was queued for the child to claim, or handed over directly by the child's own
//! relay (whose successor must count the delivery it made).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use crate::local_only::{publish_one_event, the_next_delivery_is_parked_while_other_keys_flow};
use crate::*;

/// Names the databases a child process attaches to, and whether it runs the producer's
/// relay: `transport;kind;where;namespace;relay`.
const CHILD: &str = "BUS_TEST_CHILD";
/// What the child prints once its consumer stands inside the handling of a delivery.
const REACHED: &str = "child: reached consumer.before_commit";

/// The child process: a consumer named `instance-a` on the parent's
/// databases, stopped inside the handling of the first delivery (after the handler ran,
/// before its transaction commits) until the parent kills it. Run by
/// [`an_event_that_kills_its_consumer_process_every_time_is_parked_after_max_attempts`]
/// only; run by hand, it fails saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the consumer process the real-kill tests start and kill; they run it"]
async fn child() {
    let spec = std::env::var(CHILD)
        .unwrap_or_else(|_| panic!("started by a real-kill test, which sets {CHILD}"));
    let parts: Vec<&str> = spec.splitn(5, ';').collect();
    let [transport, kind, place, namespace, relay] = parts[..] else {
        panic!("{CHILD}={spec}: expected transport;kind;where;namespace;relay")
    };
    let transport = match transport {
        "local" => Transport::Local,
        "queued" => Transport::Queued,
        "redis" => Transport::Redis,
        other => panic!("unknown transport {other}"),
    };
    let location = match kind {
        "sqlite" => Location::Sqlite(place.into()),
        "postgres" => Location::Postgres(place.into()),
        other => panic!("unknown backend {other}"),
    };
    let dbs = attach(location, namespace.to_owned()).await;
    let faults = Faults::for_tests();
    let reached = faults.arm("consumer.before_commit");
    let _running = start(transport, &dbs, "instance-a", faults, relay == "relay").await;
    tokio::time::timeout(WAIT, reached)
        .await
        .expect("a delivery reached the consumer")
        .expect("reported");
    // Straight to the process's stdout, which the parent reads (not the test's capture).
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{REACHED}").expect("stdout");
    stdout.flush().expect("stdout");
    drop(stdout);
    // Held here, inside the handling, until SIGKILL; a parent that died without killing
    // it does not leave it behind for long.
    tokio::time::sleep(WAIT * 4).await;
    panic!("not killed within {:?}", WAIT * 4);
}

/// Starts the child on `dbs` (with the producer's relay if `relay`) and returns it once it
/// stands inside a delivery's handling.
fn start_child(transport: Transport, dbs: &Dbs, relay: bool) -> Child {
    let transport = match transport {
        Transport::Local => "local",
        Transport::Queued => "queued",
        Transport::Redis => "redis",
    };
    let (kind, place) = match dbs.location() {
        Location::Sqlite(dir) => ("sqlite", dir.display().to_string()),
        Location::Postgres(name) => ("postgres", name.clone()),
    };
    let mut child = Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "process_kill::child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD,
            format!(
                "{transport};{kind};{place};{};{}",
                dbs.namespace(),
                if relay { "relay" } else { "no-relay" }
            ),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the child process");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(REACHED) {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(WAIT).is_err() {
        let _ = child.kill();
        let status = child.wait().expect("child status");
        panic!("the child process did not reach the handler ({status})");
    }
    child
}

/// `kill -9`: the process ends where it stands.
fn kill(mut child: Child) {
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("child status");
    assert!(!status.success(), "the child was killed, not finished");
}

async fn an_event_that_kills_its_consumer_process_every_time_is_parked_after_max_attempts(
    transport: Transport,
    backend: Backend,
) {
    let dbs = open(backend).await;
    publish_one_event(transport, &dbs).await;
    for _ in 1..=settings().max_attempts {
        kill(start_child(transport, &dbs, false));
    }
    the_next_delivery_is_parked_while_other_keys_flow(transport, &dbs).await;
}

/// The same event committed to the outbox, with the relay in the child: the first child's
/// relay hands it over directly (no queue row counts that delivery) and dies with it; each
/// relay that takes over must count the delivery its predecessor may have made, so the
/// event is still parked on delivery `max_attempts + 1`.
async fn an_event_handed_over_directly_that_kills_its_consumer_process_every_time_is_parked(
    backend: Backend,
) {
    let dbs = open(backend).await;
    commit(&dbs, &Outbox::new(PRODUCER), &events(1, 1)).await;
    for _ in 1..=settings().max_attempts {
        kill(start_child(Transport::Local, &dbs, true));
    }
    the_next_delivery_is_parked_while_other_keys_flow(Transport::Local, &dbs).await;
}

on_both_backends!(
    an_event_handed_over_directly_that_kills_its_consumer_process_every_time_is_parked
);

mod an_event_that_kills_its_consumer_process_every_time {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_sqlite() {
        an_event_that_kills_its_consumer_process_every_time_is_parked_after_max_attempts(
            Transport::Local,
            Backend::Sqlite,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_postgres() {
        an_event_that_kills_its_consumer_process_every_time_is_parked_after_max_attempts(
            Transport::Local,
            Backend::Postgres,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_postgres() {
        an_event_that_kills_its_consumer_process_every_time_is_parked_after_max_attempts(
            Transport::Redis,
            Backend::Postgres,
        )
        .await
    }
}
