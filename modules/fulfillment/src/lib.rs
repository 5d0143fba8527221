//! # fulfillment
//!
//! Shipments.
//!
//! - **Routes** (under `/api/fulfillment`): `GET /shipments?order_id=&limit=&after=`,
//!   `GET /shipments/{id}`, `POST /shipments/{id}/dispatch`, `POST /shipments/{id}/deliver`.
//! - **Publishes**: `fulfillment.shipment_created.v1`, `fulfillment.shipment_dispatched.v1`,
//!   `fulfillment.shipment_delivered.v1`.
//! - **Consumes**: `checkout.order_confirmed.v1`, `checkout.order_cancelled.v1`.
//! - **Owns**: schema `fulfillment` (`shipments`, and the messaging tables).
//! - **Settings**: none.

mod db;
mod domain;
mod events;
mod http;
mod use_cases;

use async_trait::async_trait;
use db::{DatabaseConnection, DbErr};
use module_api::{Module, ModuleContext, StartedModule};

pub struct Fulfillment;

pub const NAME: &str = "fulfillment";

#[async_trait]
impl Module for Fulfillment {
    fn name(&self) -> &'static str {
        NAME
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
        // Counted after each dispatch commits; present at zero before the first one.
        metrics::describe_counter!(
            "fulfillment_shipments_dispatched_total",
            "Shipments dispatched"
        );
        metrics::counter!("fulfillment_shipments_dispatched_total").increment(0);
        Ok(events::handlers(StartedModule::with_routes(http::routes(
            ctx.store,
        ))))
    }
}
