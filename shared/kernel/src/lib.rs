//! The shared kernel: value types every module agrees on (ids, money, sku, quantities)
//! and the field-error vocabulary used to report invalid input. No IO lives here.

mod errors;
mod ids;
mod money;
mod quantity;
mod sku;

pub use errors::{ErrorCode, FieldError, FieldErrors};
pub use ids::{OrderId, ShipmentId};
pub use money::{Currency, CurrencyError, Money, MoneyError};
pub use quantity::{Quantity, QuantityError, StockLevel};
pub use sku::{Sku, SkuError};

/// The names of the modules of this system, as they appear in schemas, event types and
/// configuration. A module name is `[a-z][a-z0-9_]*` so it is safe as a schema, role and
/// stream name on every backend.
pub fn is_valid_module_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 32
}
