//! Places an order: parse (the request, in `http/`) → load the prices of its skus from
//! checkout's own price list → [`Order::place`] prices it (pure) → store it as `pending`
//! and, in the same statement or transaction, publish `checkout.order_placed.v1`. Orders placed at
//! the same time are priced and stored together (see [`Placements`]). The order belongs to
//! the customer who placed it. With an `Idempotency-Key`, the same customer's same key and
//! body give back the same order; the same key with another body is refused. Keys are the
//! customer's own: another customer's key never names their order.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use chrono::{DateTime, Utc};
use contracts::Cause;
use contracts::checkout::OrderPlacedV1;
use kernel::{FieldErrors, OrderId, Sku};
use tokio::sync::oneshot;

use crate::db::queries;
use crate::domain::{NewOrder, Order, PlaceError, PriceList};
use module_api::{AtCommit, Store};

/// An `Idempotency-Key` and the hash of the request it came with.
#[derive(Clone)]
pub(crate) struct IdempotencyKey {
    pub(crate) key: String,
    pub(crate) request_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PlaceOrderError {
    #[error("checkout has no price for some skus")]
    UnknownSkus(FieldErrors),
    #[error("the items are priced in different currencies ({0})")]
    MixedCurrencies(String),
    #[error("the order total is too large")]
    TotalTooLarge,
    #[error("this Idempotency-Key was used with another request")]
    KeyReused,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<PlaceError> for PlaceOrderError {
    fn from(e: PlaceError) -> Self {
        match e {
            PlaceError::UnknownSkus(unknown) => {
                let mut fields = FieldErrors::new();
                for (i, sku) in unknown {
                    fields.add(
                        format!("items[{i}].sku"),
                        "unknown_sku",
                        format!("checkout has no price for sku {sku}"),
                    );
                }
                PlaceOrderError::UnknownSkus(fields)
            }
            PlaceError::MixedCurrencies(currencies) => PlaceOrderError::MixedCurrencies(
                currencies
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            PlaceError::TotalTooLarge => PlaceOrderError::TotalTooLarge,
            PlaceError::NoItems => {
                PlaceOrderError::Unexpected(anyhow::anyhow!("an order came without items"))
            }
        }
    }
}

pub(crate) enum Placed {
    New(Order),
    /// The key was seen with the same request: the order it made.
    Replayed(Order),
}

async fn replay(
    store: &Store,
    customer: &str,
    key: &IdempotencyKey,
) -> Result<Option<Placed>, PlaceOrderError> {
    let Some((request_hash, order_id)) =
        queries::idempotency_key(store.conn(), customer, &key.key).await?
    else {
        return Ok(None);
    };
    if request_hash != key.request_hash {
        return Err(PlaceOrderError::KeyReused);
    }
    let order = queries::load_order(store.conn(), order_id, false)
        .await?
        .context("an idempotency key points at a missing order")?;
    Ok(Some(Placed::Replayed(order)))
}

fn placed_event(order: &Order) -> OrderPlacedV1 {
    OrderPlacedV1 {
        order_id: order.id.as_uuid(),
        lines: super::event_lines(order),
        currency: order.total.currency().to_string(),
        total_minor: order.total.minor(),
    }
}

#[tracing::instrument(name = "checkout.place_order", skip_all)]
pub(crate) async fn place_order(
    placements: &Placements,
    cause: &Cause,
    command: NewOrder,
    key: Option<IdempotencyKey>,
) -> Result<Placed, PlaceOrderError> {
    let store = &placements.inner.store;
    if let Some(key) = &key
        && let Some(placed) = replay(store, &command.customer_id, key).await?
    {
        return Ok(placed);
    }
    let customer = command.customer_id.clone();
    match placements
        .write(OrderId::new(), command, cause.clone(), key.clone())
        .await?
    {
        Written::Stored(order) => {
            crate::counters::orders_placed(1);
            tracing::info!(order_id = %order.id, total_minor = order.total.minor(), "order placed");
            Ok(Placed::New(*order))
        }
        Written::Refused(e) => Err(e.into()),
        // Another request with this key won the race: answer as it did.
        Written::KeyTaken => match &key {
            Some(key) => replay(store, &customer, key)
                .await?
                .context("an idempotency key vanished")
                .map_err(Into::into),
            None => Err(anyhow::anyhow!("an order without a key lost a key's race").into()),
        },
    }
}

/// Group commit of placements: the orders that arrive while a transaction is being
/// written wait, and the next transaction prices and writes them together (one read of
/// the prices of all their skus, then their keys, orders, lines and events: a handful of
/// statements for the whole batch instead of for each order). An order the price list
/// cannot price is answered with why, and nothing of it is written.
/// Nothing waits for a batch to fill: a lone order is written at once, as before; under
/// load, orders arrive while [`Placements::writers`] transactions are in flight, and the
/// batches grow with the load. Each order is answered only once its transaction
/// committed, so a crash loses only orders nobody was told about. A batch that fails is
/// written again one order at a time, so one bad order fails alone.
#[derive(Clone)]
pub(crate) struct Placements {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// Transactions written at once, at most.
    writers: usize,
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    orders: Vec<Pending>,
    /// Writers at work: each takes batches until no order waits.
    writers: usize,
}

struct Pending {
    id: OrderId,
    command: NewOrder,
    cause: Cause,
    key: Option<IdempotencyKey>,
    done: oneshot::Sender<anyhow::Result<Written>>,
}

/// What became of one order of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Written {
    /// Priced and stored, as it now is.
    Stored(Box<Order>),
    /// Its idempotency key was taken (by an earlier request, or one of the same batch):
    /// nothing of it was written.
    KeyTaken,
    /// The price list could not price it: nothing of it was written.
    Refused(PlaceError),
}

/// Orders per transaction, at most.
const MAX_BATCH: usize = 100;

impl Placements {
    /// `writers`: how many transactions write orders at once (1 where the database takes
    /// one writer at a time anyway).
    pub(crate) fn new(store: Store, writers: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                writers: writers.max(1),
                waiting: Mutex::new(Waiting::default()),
            }),
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Prices and writes the order `command` asks for, under `id`, in the next batch, and
    /// says what became of it once that committed.
    async fn write(
        &self,
        id: OrderId,
        command: NewOrder,
        cause: Cause,
        key: Option<IdempotencyKey>,
    ) -> anyhow::Result<Written> {
        let (written, writer) = self.hand_over(id, command, cause, key);
        if let Some(writer) = writer {
            writer.start();
        }
        written.await.unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "the order's writer stopped before answering"
            ))
        })
    }

    /// Queues the order for the next batch; a writer to start when fewer than
    /// [`Inner::writers`] are at work.
    fn hand_over(
        &self,
        id: OrderId,
        command: NewOrder,
        cause: Cause,
        key: Option<IdempotencyKey>,
    ) -> (oneshot::Receiver<anyhow::Result<Written>>, Option<Writer>) {
        let (done, written) = oneshot::channel();
        let mut waiting = lock(&self.inner.waiting);
        waiting.orders.push(Pending {
            id,
            command,
            cause,
            key,
            done,
        });
        let writer = (waiting.writers < self.inner.writers).then(|| {
            waiting.writers += 1;
            Writer {
                placements: self.clone(),
                counted: true,
            }
        });
        (written, writer)
    }
}

/// A writer at work, counted in [`Waiting::writers`] while `counted`. It counts itself out
/// in the critical section where it finds no order waiting, so an order handed over after
/// that sees one writer fewer and starts one: no order is left waiting with nobody to
/// write it. A writer dropped while still counted (one that panicked, or whose task the
/// runtime dropped at shutdown) counts itself out then; if it was the last, the orders
/// still waiting are answered with an error rather than left waiting.
struct Writer {
    placements: Placements,
    counted: bool,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let orphans: Vec<Pending> = {
            let mut waiting = lock(&self.placements.inner.waiting);
            waiting.writers -= 1;
            if waiting.writers == 0 {
                waiting.orders.drain(..).collect()
            } else {
                Vec::new()
            }
        };
        for pending in orphans {
            let _ = pending.done.send(Err(anyhow::anyhow!(
                "the order's writer stopped before writing it"
            )));
        }
    }
}

impl Writer {
    /// Runs on a task of its own, not on a request's future: a client that goes away must
    /// not cut short the batch of the others.
    fn start(self) {
        tokio::spawn(self.run());
    }

    async fn run(mut self) {
        while let Some(batch) = self.next_batch() {
            self.write_batch(batch).await;
        }
    }

    /// The orders waiting, up to [`MAX_BATCH`]; `None`, and this writer counted out, when
    /// none waits.
    fn next_batch(&mut self) -> Option<Vec<Pending>> {
        let mut waiting = lock(&self.placements.inner.waiting);
        if waiting.orders.is_empty() {
            waiting.writers -= 1;
            self.counted = false;
            return None;
        }
        let n = waiting.orders.len().min(MAX_BATCH);
        Some(waiting.orders.drain(..n).collect())
    }

    async fn write_batch(&self, mut batch: Vec<Pending>) {
        let store = &self.placements.inner.store;
        // Keys are claimed in one order by every batch, so two batches that claim the
        // same keys wait for each other instead of deadlocking.
        batch.sort_by(|a, b| key_of(a).cmp(&key_of(b)));
        match write(store, &batch).await {
            Ok(written) => {
                for (pending, written) in batch.into_iter().zip(written) {
                    let _ = pending.done.send(Ok(written));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(pending) = batch.pop() {
                    let _ = pending.done.send(Err(e));
                }
            }
            Err(e) => {
                tracing::warn!(size = batch.len(), error = %format!("{e:#}"), "a batch of orders failed; writing each alone");
                for pending in batch {
                    let written = write(store, std::slice::from_ref(&pending))
                        .await
                        .and_then(|mut w| w.pop().context("a batch of one wrote nothing"));
                    let _ = pending.done.send(written);
                }
            }
        }
    }
}

fn key_of(pending: &Pending) -> Option<(&str, &str)> {
    pending
        .key
        .as_ref()
        .map(|k| (pending.command.customer_id.as_str(), k.key.as_str()))
}

/// Writes `batch`: the prices of all its skus, then each keyed order's key, then every
/// order that was priced and whose key was not taken, its lines and its event. A batch with
/// no key to claim reads its prices on their own and writes the rest in one statement on
/// PostgreSQL, atomic without a transaction around it (one `BEGIN` and one `COMMIT` round
/// trip fewer per batch); one with keys claims them in one transaction with the rest.
async fn write(store: &Store, batch: &[Pending]) -> anyhow::Result<Vec<Written>> {
    let mut skus: Vec<&Sku> = batch
        .iter()
        .flat_map(|p| p.command.items.iter().map(|(sku, _)| sku))
        .collect();
    skus.sort_unstable();
    skus.dedup();
    let now = Utc::now();
    if batch.iter().all(|p| p.key.is_none()) {
        let prices = queries::price_list(store.conn(), &skus).await?;
        let written = priced(batch, &prices, now);
        let mut writes = store.writes();
        stage(writes.at_commit(), batch, &written)?;
        writes
            .commit()
            .await
            .context("failed to write the orders")?;
        return Ok(written);
    }
    let mut tx = store
        .begin_batch()
        .await
        .context("failed to begin a transaction")?;
    let prices = queries::price_list(&tx, &skus).await?;
    let mut written = priced(batch, &prices, now);
    for (pending, written) in batch.iter().zip(written.iter_mut()) {
        let (Some(key), Written::Stored(order)) = (&pending.key, &*written) else {
            continue;
        };
        if !queries::claim_idempotency_key(
            &tx,
            &order.customer_id,
            &key.key,
            &key.request_hash,
            order.id.as_uuid(),
            order.created_at,
        )
        .await?
        {
            *written = Written::KeyTaken;
        }
    }
    stage(tx.at_commit(), batch, &written)?;
    tx.commit().await.context("failed to commit the orders")?;
    Ok(written)
}

/// Each order of `batch` priced from `prices`, or refused.
fn priced(batch: &[Pending], prices: &PriceList, now: DateTime<Utc>) -> Vec<Written> {
    batch
        .iter()
        .map(
            |pending| match Order::place(pending.id, pending.command.clone(), prices, now) {
                Ok(order) => Written::Stored(Box::new(order)),
                Err(e) => Written::Refused(e),
            },
        )
        .collect()
}

/// The orders of `batch` that are to be stored, their lines and their events, written at
/// commit: one statement on PostgreSQL.
fn stage(at_commit: &mut AtCommit, batch: &[Pending], written: &[Written]) -> anyhow::Result<()> {
    for (pending, order) in stored(batch, written) {
        at_commit
            .publish_with(&pending.cause, &placed_event(order))
            .context("the order does not fit its event")?;
    }
    let orders: Vec<&Order> = stored(batch, written).map(|(_, o)| o).collect();
    for (table, rows) in queries::order_rows(&orders)? {
        at_commit.insert_at_commit(table, rows);
    }
    Ok(())
}

/// The orders of `batch` that are to be stored, each with what asked for it.
fn stored<'a>(
    batch: &'a [Pending],
    written: &'a [Written],
) -> impl Iterator<Item = (&'a Pending, &'a Order)> {
    batch
        .iter()
        .zip(written)
        .filter_map(|(pending, w)| match w {
            Written::Stored(order) => Some((pending, &**order)),
            _ => None,
        })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::future::join_all;
    use testkit::{Backend, Spawn, TestDatabase};
    use uuid::Uuid;

    use super::*;
    use crate::db::fixtures;
    use crate::domain::asked_by;

    /// Checkout's schema on `backend`, and a store on it whose price list prices TEA-1
    /// at 4.50 EUR and COF-1 at 7.00 EUR.
    async fn stage(backend: Backend) -> (Store, TestDatabase) {
        let (spawn, _bus) = Spawn::alone(backend, Arc::new(crate::Checkout));
        let app = spawn.start().await;
        let settings = app.settings.clone();
        let db = app.stop().await;
        let store = testkit::module_store(&settings.database, crate::NAME).await;
        for (sku, price_minor) in [("TEA-1", 450), ("COF-1", 700)] {
            let price = queries::StoredPrice {
                sku: sku.into(),
                price_minor,
                currency: "EUR".into(),
                version: 1,
            };
            queries::apply_price(store.conn(), price, Utc::now())
                .await
                .expect("a price");
        }
        (store, db)
    }

    /// An order of one TEA-1 by `customer`, and the id it is to be stored under.
    fn asked(customer: &str) -> (OrderId, NewOrder) {
        (OrderId::new(), asked_by(customer, &[("TEA-1", 1)]))
    }

    fn stored(written: &Written) -> Option<&Order> {
        match written {
            Written::Stored(order) => Some(order),
            _ => None,
        }
    }

    /// Hands every order over before any writer starts, so they wait together.
    async fn together(
        placements: &Placements,
        orders: &[((OrderId, NewOrder), Option<IdempotencyKey>)],
    ) -> Vec<anyhow::Result<Written>> {
        let mut writers = Vec::new();
        let mut answers = Vec::new();
        for ((id, command), key) in orders {
            let (answer, writer) =
                placements.hand_over(*id, command.clone(), Cause::fresh(), key.clone());
            answers.push(answer);
            writers.extend(writer);
        }
        for writer in writers {
            writer.start();
        }
        join_all(answers)
            .await
            .into_iter()
            .map(|a| a.expect("answered"))
            .collect()
    }

    fn key(key: &str, body: &str) -> Option<IdempotencyKey> {
        Some(IdempotencyKey {
            key: key.into(),
            request_hash: body.into(),
        })
    }

    /// Orders that arrive together are priced and written together: twenty orders, three
    /// of them with one key and two with another, handed over before any writer ran.
    /// Each key stores its first order only (the others are told it is taken, and write
    /// nothing), every stored order is priced from the price list and has its one event,
    /// and on PostgreSQL a single transaction wrote them all.
    async fn orders_that_arrive_together_are_written_in_one_transaction(backend: Backend) {
        let (store, _db) = stage(backend).await;
        let placements = Placements::new(store.clone(), 4);
        let asked: Vec<((OrderId, NewOrder), Option<IdempotencyKey>)> = (0..20)
            .map(|i| match i {
                0..3 => (asked("ada"), key("k-1", "same body")),
                3..5 => (asked("ada"), key("k-2", &format!("body {i}"))),
                // Every other one of coffee: a batch is priced from all its orders' skus.
                _ if i % 2 == 0 => (asked(&format!("customer-{i}")), None),
                _ => (
                    (
                        OrderId::new(),
                        asked_by(&format!("customer-{i}"), &[("COF-1", 1)]),
                    ),
                    None,
                ),
            })
            .collect();
        let written: Vec<Written> = together(&placements, &asked)
            .await
            .into_iter()
            .map(|w| w.expect("written"))
            .collect();
        let stored: Vec<Uuid> = asked
            .iter()
            .zip(&written)
            .filter_map(|(((id, command), _), w)| {
                let order = stored(w)?;
                assert_eq!(order.id, *id, "stored under the id it was handed over with");
                let price = if command.items[0].0.as_str() == "COF-1" {
                    700
                } else {
                    450
                };
                assert_eq!(order.total.minor(), price, "priced from the price list");
                Some(id.as_uuid())
            })
            .collect();
        let taken = written.iter().filter(|w| **w == Written::KeyTaken).count();
        assert_eq!((stored.len(), taken), (17, 3), "{written:?}");
        assert_eq!(
            fixtures::orders_and_placed_events(store.db()).await,
            (17, 17)
        );
        if backend == Backend::Postgres {
            assert_eq!(
                fixtures::transactions_that_wrote(store.db(), &stored).await,
                1,
                "one transaction wrote every order"
            );
        }
        // A key told "taken" names the order its first request stored.
        let replayed = replay(
            &store,
            "ada",
            &IdempotencyKey {
                key: "k-1".into(),
                request_hash: "same body".into(),
            },
        )
        .await
        .expect("replayed");
        assert!(matches!(replayed, Some(Placed::Replayed(o)) if stored.contains(&o.id.as_uuid())));
    }

    /// Orders without a key that arrive together need no transaction around them: their
    /// prices are read on the pool and the orders, lines and events written by one
    /// statement on PostgreSQL (one transaction id on every row), each priced from the
    /// price list with its one event.
    async fn orders_without_keys_are_written_together(backend: Backend) {
        let (store, _db) = stage(backend).await;
        let placements = Placements::new(store.clone(), 4);
        let asked: Vec<((OrderId, NewOrder), Option<IdempotencyKey>)> = (0..12)
            .map(|i| {
                let sku = if i % 2 == 0 { "TEA-1" } else { "COF-1" };
                let customer = format!("customer-{i}");
                ((OrderId::new(), asked_by(&customer, &[(sku, 2)])), None)
            })
            .collect();
        let written = together(&placements, &asked).await;
        let mut ids = Vec::new();
        for (((id, command), _), w) in asked.iter().zip(&written) {
            let order = w.as_ref().ok().and_then(stored).expect("stored");
            let unit = if command.items[0].0.as_str() == "COF-1" {
                700
            } else {
                450
            };
            assert_eq!(order.total.minor(), 2 * unit, "priced from the price list");
            ids.push(id.as_uuid());
        }
        assert_eq!(
            fixtures::orders_and_placed_events(store.db()).await,
            (12, 12)
        );
        if backend == Backend::Postgres {
            assert_eq!(
                fixtures::transactions_that_wrote(store.db(), &ids).await,
                1,
                "one statement wrote every order"
            );
        }
    }

    /// An order of a batch that the price list cannot price is answered with why, alone:
    /// the others of its batch are stored, and nothing of it is written.
    async fn an_order_the_price_list_cannot_price_is_refused_alone(backend: Backend) {
        let (store, _db) = stage(backend).await;
        let placements = Placements::new(store.clone(), 4);
        let unknown = (
            OrderId::new(),
            asked_by("bob", &[("TEA-1", 1), ("NOPE-1", 2)]),
        );
        let batch = [asked("ada"), unknown, asked("cy")].map(|asked| (asked, None));
        let written = together(&placements, &batch).await;
        let sku = Sku::parse("NOPE-1").expect("a sku");
        assert!(
            matches!(&written[1], Ok(Written::Refused(PlaceError::UnknownSkus(u))) if *u == [(1, sku)]),
            "{:?}",
            written[1]
        );
        for i in [0, 2] {
            assert!(
                written[i].as_ref().ok().and_then(stored).is_some(),
                "{i}: {:?}",
                written[i]
            );
        }
        assert_eq!(fixtures::orders_and_placed_events(store.db()).await, (2, 2));
    }

    /// An order that cannot be written (its id is taken) fails the batch it came in; the
    /// batch is written again one order at a time, so the others are stored and only that
    /// one fails, with no event of it left behind.
    async fn a_batch_that_fails_is_written_again_one_order_at_a_time(backend: Backend) {
        let (store, _db) = stage(backend).await;
        let placements = Placements::new(store.clone(), 4);
        let (first, command) = asked("ada");
        let written = placements
            .write(first, command.clone(), Cause::fresh(), None)
            .await
            .expect("the first order");
        assert!(stored(&written).is_some(), "{written:?}");
        let batch =
            [asked("bob"), (first, command), asked("cy"), asked("di")].map(|asked| (asked, None));
        let written = together(&placements, &batch).await;
        assert!(written[1].is_err(), "the taken id fails: {:?}", written[1]);
        for i in [0, 2, 3] {
            assert!(
                written[i].as_ref().ok().and_then(stored).is_some(),
                "{i}: {:?}",
                written[i]
            );
        }
        assert_eq!(fixtures::orders_and_placed_events(store.db()).await, (4, 4));
    }

    /// A writer that finds no order waiting is counted out at once, before it is even
    /// dropped: an order handed over right after that starts a writer of its own instead
    /// of waiting for one that is stopping (with one writer at most, SQLite's case, it
    /// would otherwise wait for the next order to come along).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_order_that_arrives_as_the_last_writer_stops_starts_another() {
        let (store, _db) = stage(Backend::Sqlite).await;
        let placements = Placements::new(store, 1);
        let (id, command) = asked("ada");
        let (first, writer) = placements.hand_over(id, command, Cause::fresh(), None);
        let mut writer = writer.expect("the first order starts a writer");
        let batch = writer.next_batch().expect("the first order");
        assert!(writer.next_batch().is_none(), "nothing more waits");
        let (id, command) = asked("bob");
        let (second, next) = placements.hand_over(id, command, Cause::fresh(), None);
        let next = next.expect("the writer that is stopping no longer counts");
        writer.write_batch(batch).await;
        drop(writer);
        next.start();
        for answer in [first, second] {
            let written = answer.await.expect("answered").expect("written");
            assert!(stored(&written).is_some(), "{written:?}");
        }
    }

    /// On PostgreSQL the price read is planned once per connection and its plan kept,
    /// whatever the number of skus: planned anew for each batch of placements, it cost
    /// three times what running it took.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_price_read_keeps_its_plan_on_postgres() {
        let (store, _db) = stage(Backend::Postgres).await;
        let sku = |s: &str| Sku::parse(s).expect("a sku");
        let (tea, coffee) = (sku("TEA-1"), sku("COF-1"));
        let sets: Vec<Vec<&Sku>> = (0..12)
            .map(|n| {
                if n % 2 == 0 {
                    vec![&tea]
                } else {
                    vec![&tea, &coffee]
                }
            })
            .collect();
        let (statements, generic, custom) = fixtures::price_read_plans(store.db(), &sets).await;
        assert_eq!(statements, 1, "one statement for every number of skus");
        assert!(
            generic >= 6 && custom <= 6,
            "planned anew for each call: {custom} own plans, {generic} kept"
        );
    }

    testkit::on_both_backends!(
        orders_that_arrive_together_are_written_in_one_transaction,
        orders_without_keys_are_written_together,
        an_order_the_price_list_cannot_price_is_refused_alone,
        a_batch_that_fails_is_written_again_one_order_at_a_time,
    );
}
