//! Catalog's use cases, one per file, each with its own error type.

pub(crate) mod create_product;
pub(crate) mod get_product;
pub(crate) mod hold_stock;
pub(crate) mod list_products;
pub(crate) mod restock;
pub(crate) mod update_product;
