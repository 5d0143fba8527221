//! Catalog's rules, with no IO: what a valid product and a valid change look like
//! (`product.rs`), and how stock is held for orders (`stock.rs`): all lines or none,
//! released on a cancel, held again after a dispatch even when that oversells. Every rule
//! here is a pure function, table-tested without a database.

mod product;
mod stock;

pub(crate) use product::{
    NewProduct, Product, ProductChanges, ProductName, description, reprice, stored_price,
};
pub(crate) use stock::{
    Decision, Hold, Lines, OnCancel, decide, merged, on_cancelled, on_reinstated, rehold,
};
