//! # checkout
//!
//! Orders and payments.
//!
//! - **Routes** (under `/api/checkout`): `POST /orders` (optional `Idempotency-Key`),
//!   `GET /orders/{id}`, `POST /orders/{id}/cancel`, `GET /prices/{sku}` (its local price
//!   list).
//! - **Publishes**: `checkout.order_placed.v1`, `checkout.order_confirmed.v1`,
//!   `checkout.order_cancelled.v1`, `checkout.order_reinstated.v1`.
//! - **Consumes**: `catalog.product_published.v1`, `catalog.product_repriced.v1`,
//!   `catalog.stock_reserved.v1`, `catalog.stock_rejected.v1`,
//!   `fulfillment.shipment_dispatched.v1`, `fulfillment.shipment_delivered.v1`.
//! - **Owns**: schema `checkout` (`prices`, `orders`, `order_lines`, `payment_attempts`,
//!   `idempotency_keys`, and the messaging tables).
//! - **Settings**: `[modules.checkout.payment]`: `provider` (`simulated` or `http`),
//!   `url`, `ca_file`, `allow_http`, `api_key` (the HTTP provider), `latency_ms`, `failure_rate` (the simulated
//!   provider), `max_concurrent` (the bulkhead), `timeout_ms`, `retry_base_ms`,
//!   `retry_max_ms`; `[modules.checkout.payment.breaker]`: `failures`, `open_ms`,
//!   `probes`;
//!   `[modules.checkout.watchdog]`: `order_deadline_secs` (an order pending longer is
//!   reported), `every_secs`; `idempotency_retention_secs` (how long an `Idempotency-Key`
//!   is kept).
//! - **Background**: the payment worker; the order watchdog; the cleaner deletes expired
//!   idempotency keys.

mod counters;
mod db;
mod domain;
mod events;
mod http;
mod payments;
mod use_cases;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use db::{DatabaseConnection, DbErr};
use futures::FutureExt;
use kernel::FieldErrors;
use module_api::parse_settings;
use module_api::{Module, ModuleContext, StartedModule};
use serde::Deserialize;
use validator::Validate;

pub use payments::DECLINED_TOKEN;

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    #[validate(nested)]
    payment: payments::PaymentSettings,
    #[validate(nested)]
    watchdog: use_cases::watch_orders::WatchdogSettings,
    /// How long a customer's `Idempotency-Key` answers with the order it placed; the cleaner
    /// then deletes it and the key may place a new order.
    #[validate(range(min = 1, max = 31536000))]
    idempotency_retention_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            payment: Default::default(),
            watchdog: Default::default(),
            idempotency_retention_secs: 86400,
        }
    }
}

fn settings(raw: &serde_json::Value, environment: &str) -> Result<Settings, FieldErrors> {
    let settings: Settings = parse_settings(raw)?;
    let mut errors = match settings.validate() {
        Ok(()) => FieldErrors::new(),
        Err(e) => module_api::flatten_validation_errors(&e),
    };
    settings.payment.check(&mut errors, environment);
    errors.into_result()?;
    Ok(settings)
}

pub struct Checkout;

pub const NAME: &str = "checkout";

#[async_trait]
impl Module for Checkout {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check_settings(
        &self,
        raw: &serde_json::Value,
        environment: &str,
    ) -> Result<(), FieldErrors> {
        settings(raw, environment).map(|_| ())
    }

    async fn migrate(&self, conn: &DatabaseConnection) -> Result<(), DbErr> {
        module_api::schema::up::<db::Migrator>(conn).await
    }

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        <http::ApiDoc as utoipa::OpenApi>::openapi()
    }

    fn migrations(&self) -> Vec<String> {
        module_api::schema::names::<db::Migrator>()
    }

    async fn start(&self, ctx: ModuleContext) -> anyhow::Result<StartedModule> {
        let settings = settings(&ctx.settings, &ctx.environment)
            .map_err(|e| anyhow::anyhow!("modules.checkout: {e}"))?;
        counters::describe();
        let store = ctx.store;
        let breaker = Arc::new(payments::breaker::Breaker::new(
            settings.payment.breaker.clone(),
        ));
        let payments = Arc::new(payments::Handoff::new(
            breaker.clone(),
            settings.payment.lease_ms(),
        ));
        let worker = payments::PaymentWorker {
            store: store.clone(),
            gateway: settings.payment.gateway()?,
            breaker,
            settings: settings.payment.clone(),
            handoff: payments.clone(),
            poll: Duration::from_millis(250),
        };
        let retention = Duration::from_secs(settings.idempotency_retention_secs);
        let placements =
            use_cases::place_order::Placements::new(store.clone(), db::writers_at_once(store.db()));
        let watchdog = use_cases::watch_orders::OrderWatchdog {
            db: store.db().clone(),
            settings: settings.watchdog.clone(),
        };
        Ok(events::handlers(
            StartedModule::with_routes(http::routes(placements)),
            payments,
        )
        .task(move |cancel| worker.run(cancel).boxed())
        .task(move |cancel| watchdog.run(cancel).boxed())
        .prune(
            "idempotency_keys",
            Arc::new(move |db| db::queries::forget_keys(db, retention).boxed()),
        ))
    }
}

#[cfg(test)]
mod tests {
    /// The fields a settings table takes, as serde lists them when refusing an unknown one.
    fn fields_of(raw: serde_json::Value) -> Vec<String> {
        let message = match serde_json::from_value::<super::Settings>(raw) {
            Ok(_) => panic!("an unknown field was taken"),
            Err(e) => e.to_string(),
        };
        let expected = message
            .split_once("expected one of ")
            .or_else(|| message.split_once("expected "))
            .unwrap_or_else(|| panic!("no list of fields in {message:?}"))
            .1;
        expected
            .split([',', ' '])
            .filter(|w| *w != "or")
            .map(|f| {
                f.trim_matches(|c: char| c == '`' || c.is_whitespace())
                    .to_owned()
            })
            .filter(|f| !f.is_empty())
            .collect()
    }

    /// Every key of `[modules.checkout]` has a row in the README's configuration reference.
    #[test]
    fn the_readme_documents_every_checkout_setting() {
        let readme = include_str!("../../../README.md");
        let tables = [
            ("modules.checkout", serde_json::json!({"zz_unknown": 1})),
            (
                "modules.checkout.payment",
                serde_json::json!({"payment": {"zz_unknown": 1}}),
            ),
            (
                "modules.checkout.payment.breaker",
                serde_json::json!({"payment": {"breaker": {"zz_unknown": 1}}}),
            ),
            (
                "modules.checkout.watchdog",
                serde_json::json!({"watchdog": {"zz_unknown": 1}}),
            ),
        ];
        for (prefix, raw) in tables {
            let fields = fields_of(raw);
            assert!(!fields.is_empty(), "{prefix}");
            for field in fields {
                let key = format!("{prefix}.{field}");
                let nested = tables_named(&key);
                assert!(
                    nested || readme.contains(&format!("| `{key}` |")),
                    "README.md has no configuration row for {key}"
                );
            }
        }
    }

    /// Keys that are tables of their own, checked field by field.
    fn tables_named(key: &str) -> bool {
        [
            "modules.checkout.payment",
            "modules.checkout.payment.breaker",
            "modules.checkout.watchdog",
        ]
        .contains(&key)
    }
}
