//! Checkout's rules, with no IO: how an order is placed and priced (`order.rs`), the
//! order's state machine as one table (`status.rs`), and a payment attempt's, with what
//! an answer of the provider does to its order (`payment.rs`). Every rule here is a pure
//! function, table-tested without a database.

mod order;
mod payment;
mod status;

#[cfg(test)]
pub(crate) use order::asked_by;
pub(crate) use order::{
    Address, Line, NewOrder, Order, PlaceError, PriceList, add_item, address_line2, address_text,
    country, email, item_count, payment_token,
};
pub(crate) use payment::{PaymentAnswer, PaymentStatus, Resolution, Settlement, resolve};
pub(crate) use status::{OrderEvent, OrderStatus, Refusal, StatusReason, Step, Target, transition};
