//! Lists products in sku order, a page at a time (keyset pagination: the next page starts
//! after the last sku of this one, so pages stay stable while products are added).

use kernel::Sku;
use module_api::ModuleDb;

use crate::db::queries;
use crate::domain::Product;

pub(crate) struct Page {
    pub items: Vec<Product>,
    /// The sku to pass as `after` for the next page; `None` on the last page.
    pub next_after: Option<Sku>,
}

#[tracing::instrument(name = "catalog.list_products", skip_all)]
pub(crate) async fn list_products(
    db: &ModuleDb,
    after: Option<Sku>,
    limit: u64,
) -> anyhow::Result<Page> {
    // One row more than asked tells whether another page exists.
    let mut items = queries::list_products(db.conn(), after.as_ref(), limit + 1).await?;
    let more = items.len() as u64 > limit;
    items.truncate(limit as usize);
    let next_after = if more {
        items.last().map(|p| p.sku.clone())
    } else {
        None
    };
    Ok(Page { items, next_after })
}
