//! Products read recently, kept in memory so that a product read need not reach the
//! database.
//!
//! What it promises: a read shows what the database held at most `ttl` (plus one query's
//! time) ago. This process's own changes (a product created, changed or restocked, stock
//! held or released for an order) are visible to the next read: each forgets the skus it
//! changed once its transaction committed. Another process's changes (another replica of
//! catalog) are visible within `ttl`. A sku that is not found is not remembered, so a new
//! product shows at once everywhere. A `ttl` of zero turns the cache off.
//!
//! The race it closes: a read that loaded a product just before a change committed must
//! not keep that older copy after the change forgot the sku. Each sku maps to one of a
//! fixed set of counters that every forget increments before it removes the entry; a read
//! notes its sku's counter before loading and removes what it stored if the counter moved
//! meanwhile. A forget that comes after that check removes the entry itself.

use std::future::Future;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kernel::Sku;

use crate::domain::Product;

/// Counters the skus are spread over; two skus sharing one only cost an extra load.
const STRIPES: usize = 1024;

/// The most products kept; beyond it the least used are dropped first.
const CAPACITY: u64 = 100_000;

#[derive(Clone)]
pub(crate) struct ProductCache {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    entries: moka::sync::Cache<Sku, Product>,
    stripes: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
}

impl ProductCache {
    /// A cache whose entries live `ttl`; `Duration::ZERO` keeps nothing.
    pub(crate) fn new(ttl: Duration) -> Self {
        if ttl.is_zero() {
            return Self { inner: None };
        }
        Self {
            inner: Some(Arc::new(Inner {
                entries: moka::sync::Cache::builder()
                    .max_capacity(CAPACITY)
                    .time_to_live(ttl)
                    .build(),
                stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
                hasher: Default::default(),
            })),
        }
    }

    /// The product of `sku`, from memory or else from `load`, remembered when found.
    pub(crate) async fn get_or_load<E, F>(&self, sku: &Sku, load: F) -> Result<Option<Product>, E>
    where
        F: Future<Output = Result<Option<Product>, E>>,
    {
        let Some(inner) = &self.inner else {
            return load.await;
        };
        if let Some(product) = inner.entries.get(sku) {
            return Ok(Some(product));
        }
        let stripe = inner.stripe(sku);
        let seen = stripe.load(Ordering::SeqCst);
        let loaded = load.await?;
        if let Some(product) = &loaded {
            inner.entries.insert(sku.clone(), product.clone());
            if stripe.load(Ordering::SeqCst) != seen {
                inner.entries.invalidate(sku);
            }
        }
        Ok(loaded)
    }

    /// Forgets `skus`; call it once the transaction that changed them committed.
    pub(crate) fn forget<'a>(&self, skus: impl IntoIterator<Item = &'a str>) {
        let Some(inner) = &self.inner else {
            return;
        };
        for sku in skus {
            let Ok(sku) = Sku::parse(sku) else {
                continue;
            };
            inner.stripe(&sku).fetch_add(1, Ordering::SeqCst);
            inner.entries.invalidate(&sku);
        }
    }
}

impl Inner {
    fn stripe(&self, sku: &Sku) -> &AtomicU64 {
        &self.stripes[(self.hasher.hash_one(sku) as usize) % STRIPES]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel::{Currency, Money};
    use std::convert::Infallible;

    use crate::domain::ProductName;

    fn product(sku: &str, available: i64) -> Product {
        Product {
            sku: Sku::parse(sku).expect("a sku"),
            name: ProductName::parse("Mug").expect("a name"),
            description: None,
            price: Money::new(500, Currency::parse("EUR").expect("a currency")).expect("a price"),
            available,
            version: 1,
        }
    }

    async fn read(cache: &ProductCache, sku: &str, db: i64) -> i64 {
        let parsed = Sku::parse(sku).expect("a sku");
        let loaded = cache
            .get_or_load(&parsed, async {
                Ok::<_, Infallible>(Some(product(sku, db)))
            })
            .await;
        loaded.expect("loaded").expect("found").available
    }

    #[tokio::test]
    async fn a_read_is_served_from_memory_until_the_sku_is_forgotten() {
        let cache = ProductCache::new(Duration::from_secs(60));
        assert_eq!(read(&cache, "SKU-1", 5).await, 5);
        assert_eq!(
            read(&cache, "SKU-1", 4).await,
            5,
            "the second read is remembered"
        );
        cache.forget(["SKU-1"]);
        assert_eq!(
            read(&cache, "SKU-1", 4).await,
            4,
            "a forgotten sku is loaded again"
        );
    }

    #[tokio::test]
    async fn an_entry_lives_at_most_its_ttl() {
        let cache = ProductCache::new(Duration::from_millis(50));
        assert_eq!(read(&cache, "SKU-1", 5).await, 5);
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(read(&cache, "SKU-1", 4).await, 4);
    }

    #[tokio::test]
    async fn a_ttl_of_zero_keeps_nothing() {
        let cache = ProductCache::new(Duration::ZERO);
        assert_eq!(read(&cache, "SKU-1", 5).await, 5);
        assert_eq!(read(&cache, "SKU-1", 4).await, 4);
    }

    #[tokio::test]
    async fn a_sku_not_found_is_not_remembered() {
        let cache = ProductCache::new(Duration::from_secs(60));
        let sku = Sku::parse("SKU-1").expect("a sku");
        let none = cache
            .get_or_load(&sku, async { Ok::<_, Infallible>(None) })
            .await;
        assert_eq!(none.expect("loaded"), None);
        assert_eq!(read(&cache, "SKU-1", 3).await, 3);
    }

    /// The race: the read loads the old row, the change commits and forgets the sku while
    /// the read is still on its way back, then the read stores what it loaded. The next
    /// read must not get that older copy.
    #[tokio::test]
    async fn a_read_that_loaded_before_a_change_committed_does_not_keep_its_copy() {
        let cache = ProductCache::new(Duration::from_secs(60));
        let sku = Sku::parse("SKU-1").expect("a sku");
        let loaded = cache
            .get_or_load(&sku, async {
                let old = product("SKU-1", 5);
                // the change commits and forgets the sku while this load is in flight
                cache.forget(["SKU-1"]);
                Ok::<_, Infallible>(Some(old))
            })
            .await;
        assert_eq!(
            loaded.expect("loaded").expect("found").available,
            5,
            "the read itself answers"
        );
        assert_eq!(
            read(&cache, "SKU-1", 4).await,
            4,
            "the copy loaded before the change was not kept"
        );
    }

    #[tokio::test]
    async fn forgetting_one_sku_keeps_the_others() {
        let cache = ProductCache::new(Duration::from_secs(60));
        assert_eq!(read(&cache, "SKU-1", 5).await, 5);
        assert_eq!(read(&cache, "SKU-2", 7).await, 7);
        cache.forget(["SKU-2", "not a sku"]);
        assert_eq!(read(&cache, "SKU-1", 1).await, 5);
    }
}
