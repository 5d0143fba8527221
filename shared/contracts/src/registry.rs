//! Every event type, and which module consumes which. A bus creates a consumer group (or
//! an inbox queue) for every subscriber before anything is published, so no event is lost
//! because its consumer had not started yet; trimming waits for every subscriber.

use crate::{ContractError, Envelope, Event, catalog, checkout, fulfillment};

/// One module's interest in one event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub consumer: &'static str,
    pub event_type: &'static str,
}

const fn sub(consumer: &'static str, event_type: &'static str) -> Subscription {
    Subscription {
        consumer,
        event_type,
    }
}

/// Who consumes what. Each module's handlers must match its rows (a test holds it).
pub const SUBSCRIPTIONS: &[Subscription] = &[
    sub("catalog", checkout::OrderPlacedV1::TYPE),
    sub("catalog", checkout::OrderCancelledV1::TYPE),
    sub("catalog", checkout::OrderReinstatedV1::TYPE),
    sub("checkout", catalog::ProductPublishedV1::TYPE),
    sub("checkout", catalog::ProductRepricedV1::TYPE),
    sub("checkout", catalog::StockReservedV1::TYPE),
    sub("checkout", catalog::StockRejectedV1::TYPE),
    sub("checkout", fulfillment::ShipmentDispatchedV1::TYPE),
    sub("checkout", fulfillment::ShipmentDeliveredV1::TYPE),
    sub("fulfillment", checkout::OrderConfirmedV1::TYPE),
    sub("fulfillment", checkout::OrderCancelledV1::TYPE),
];

/// One event type: its wire name, its JSON Schema, and a check that an envelope of this
/// type decodes and keeps the contract's rules.
#[derive(Clone, Copy)]
pub struct EventType {
    pub name: &'static str,
    pub schema: fn() -> schemars::Schema,
    pub check: fn(&Envelope) -> Result<(), ContractError>,
}

const fn event_type<E: Event>() -> EventType {
    EventType {
        name: E::TYPE,
        schema: || schemars::schema_for!(E),
        check: |envelope| envelope.decode::<E>().map(|_| ()),
    }
}

/// Every event type of the system.
pub const EVENT_TYPES: &[EventType] = &[
    event_type::<catalog::ProductPublishedV1>(),
    event_type::<catalog::ProductRepricedV1>(),
    event_type::<catalog::StockReservedV1>(),
    event_type::<catalog::StockRejectedV1>(),
    event_type::<catalog::StockReleasedV1>(),
    event_type::<checkout::OrderPlacedV1>(),
    event_type::<checkout::OrderConfirmedV1>(),
    event_type::<checkout::OrderCancelledV1>(),
    event_type::<checkout::OrderReinstatedV1>(),
    event_type::<fulfillment::ShipmentCreatedV1>(),
    event_type::<fulfillment::ShipmentDispatchedV1>(),
    event_type::<fulfillment::ShipmentDeliveredV1>(),
];

/// The description of an event type, by wire name.
pub fn event_type_named(name: &str) -> Option<&'static EventType> {
    EVENT_TYPES.iter().find(|t| t.name == name)
}

/// The event types a module consumes.
pub fn subscriptions_of(consumer: &str) -> Vec<&'static str> {
    SUBSCRIPTIONS
        .iter()
        .filter(|s| s.consumer == consumer)
        .map(|s| s.event_type)
        .collect()
}

/// The modules that consume an event type.
pub fn consumers_of(event_type: &str) -> Vec<&'static str> {
    SUBSCRIPTIONS
        .iter()
        .filter(|s| s.event_type == event_type)
        .map(|s| s.consumer)
        .collect()
}

/// The modules that consume any event of `producer`, in name order.
pub fn subscribers_of(producer: &str) -> Vec<&'static str> {
    let mut consumers: Vec<&'static str> = SUBSCRIPTIONS
        .iter()
        .filter(|s| crate::source_of(s.event_type) == producer)
        .map(|s| s.consumer)
        .collect();
    consumers.sort_unstable();
    consumers.dedup();
    consumers
}
