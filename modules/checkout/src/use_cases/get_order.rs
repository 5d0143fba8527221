//! Reads one order, or a page of orders, as a caller may see them: a customer sees only the
//! orders they placed (another customer's order does not exist for them), staff see all.

use module_api::ModuleDb;
use uuid::Uuid;

use crate::db::queries;
use crate::domain::Order;

/// Whose orders a caller may see.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Viewer<'a> {
    /// Staff: every order.
    Anyone,
    /// A customer: only the orders placed under this id.
    Owner(&'a str),
}

impl Viewer<'_> {
    pub(crate) fn may_see(&self, order: &Order) -> bool {
        match self {
            Viewer::Anyone => true,
            Viewer::Owner(id) => order.customer_id == *id,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum GetOrderError {
    #[error("no order has id {0}")]
    NotFound(Uuid),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

#[tracing::instrument(name = "checkout.get_order", skip_all, fields(order_id = %id))]
pub(crate) async fn get_order(
    db: &ModuleDb,
    viewer: Viewer<'_>,
    id: Uuid,
) -> Result<Order, GetOrderError> {
    queries::load_order(db.conn(), id, false)
        .await?
        .filter(|order| viewer.may_see(order))
        .ok_or(GetOrderError::NotFound(id))
}

/// Up to `limit` orders the viewer may see, by id (ids are UUID v7: oldest first), after
/// `after`; and the id to continue after when there may be more.
#[tracing::instrument(name = "checkout.list_orders", skip_all)]
pub(crate) async fn list_orders(
    db: &ModuleDb,
    viewer: Viewer<'_>,
    after: Option<Uuid>,
    limit: u64,
) -> anyhow::Result<(Vec<Order>, Option<Uuid>)> {
    let owner = match viewer {
        Viewer::Anyone => None,
        Viewer::Owner(customer) => Some(customer),
    };
    let ids = queries::order_ids(db.conn(), owner, after, limit).await?;
    let mut found = queries::load_orders(db.conn(), &ids, false).await?;
    let items: Vec<Order> = ids.iter().filter_map(|id| found.remove(id)).collect();
    let next_after = if items.len() as u64 == limit {
        items.last().map(|o| o.id.as_uuid())
    } else {
        None
    };
    Ok((items, next_after))
}
