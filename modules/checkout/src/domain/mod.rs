//! Checkout's rules, with no IO: how an order is placed and priced (`order.rs`), and the
//! state machines of an order's status and of a payment attempt (`status.rs`). Every rule
//! here is a pure function, table-tested without a database.

mod order;
mod status;

pub(crate) use order::{
    Address, Line, NewOrder, Order, PlaceError, PriceList, add_item, address_line2, address_text,
    country, email, item_count, payment_token,
};
pub(crate) use status::{
    Cancel, Dispatch, OrderStatus, PaymentAnswer, PaymentStatus, Settlement, StatusReason, settle,
};
