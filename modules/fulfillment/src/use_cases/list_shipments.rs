//! Lists shipments in id order, a page at a time, optionally of one order only.

use kernel::{OrderId, ShipmentId};
use module_api::ModuleDb;

use crate::db::queries;
use crate::domain::Shipment;

/// Up to `limit` shipments after `after`; and the id to continue after when there are
/// more.
pub(crate) async fn list_shipments(
    db: &ModuleDb,
    order_id: Option<OrderId>,
    after: Option<ShipmentId>,
    limit: u64,
) -> anyhow::Result<(Vec<Shipment>, Option<ShipmentId>)> {
    // One row more than asked tells whether another page exists.
    let mut items = queries::shipments(db.conn(), order_id, after, limit + 1).await?;
    let more = items.len() as u64 > limit;
    items.truncate(limit as usize);
    let next = if more {
        items.last().map(|s| s.id)
    } else {
        None
    };
    Ok((items, next))
}
