//! Maps each of checkout's use-case errors to an HTTP answer.

use module_api::ApiError;

use crate::use_cases::cancel_order::CancelOrderError;
use crate::use_cases::get_order::GetOrderError;
use crate::use_cases::place_order::PlaceOrderError;

fn order_not_found(id: uuid::Uuid) -> ApiError {
    ApiError::not_found("order_not_found", format!("no order has id {id}"))
}

impl From<PlaceOrderError> for ApiError {
    fn from(e: PlaceOrderError) -> Self {
        match e {
            PlaceOrderError::UnknownSkus(fields) => {
                ApiError::unprocessable("unknown_sku", "checkout has no price for some items")
                    .with_fields(fields)
            }
            PlaceOrderError::MixedCurrencies(_) => {
                ApiError::unprocessable("mixed_currencies", e.to_string())
            }
            PlaceOrderError::TotalTooLarge => {
                ApiError::unprocessable("total_too_large", e.to_string())
            }
            PlaceOrderError::KeyReused => {
                ApiError::unprocessable("idempotency_key_reused", e.to_string())
            }
            PlaceOrderError::Unexpected(e) => ApiError::internal(e),
        }
    }
}

impl From<GetOrderError> for ApiError {
    fn from(e: GetOrderError) -> Self {
        match e {
            GetOrderError::NotFound(id) => order_not_found(id),
            GetOrderError::Unexpected(e) => ApiError::internal(e),
        }
    }
}

impl From<CancelOrderError> for ApiError {
    fn from(e: CancelOrderError) -> Self {
        match e {
            CancelOrderError::NotFound(id) => order_not_found(id),
            CancelOrderError::AlreadyShipped(_) => {
                ApiError::conflict("order_already_shipped", e.to_string())
            }
            CancelOrderError::NotCancellable(..) => {
                ApiError::conflict("order_not_cancellable", e.to_string())
            }
            CancelOrderError::Unexpected(e) => ApiError::internal(e),
        }
    }
}
