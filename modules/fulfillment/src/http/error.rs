//! Maps each of fulfillment's use-case errors to an HTTP answer.

use module_api::ApiError;

use crate::use_cases::deliver_shipment::DeliverShipmentError;
use crate::use_cases::dispatch_shipment::DispatchShipmentError;
use crate::use_cases::get_shipment::GetShipmentError;

fn shipment_not_found(id: impl std::fmt::Display) -> ApiError {
    ApiError::not_found("shipment_not_found", format!("no shipment has id {id}"))
}

impl From<GetShipmentError> for ApiError {
    fn from(e: GetShipmentError) -> Self {
        match e {
            GetShipmentError::NotFound(id) => shipment_not_found(id),
            GetShipmentError::Unexpected(e) => ApiError::internal(e),
        }
    }
}

impl From<DispatchShipmentError> for ApiError {
    fn from(e: DispatchShipmentError) -> Self {
        match e {
            DispatchShipmentError::NotFound(id) => shipment_not_found(id),
            DispatchShipmentError::WrongStatus { .. } => {
                ApiError::conflict("invalid_transition", e.to_string())
            }
            DispatchShipmentError::Unexpected(e) => ApiError::internal(e),
        }
    }
}

impl From<DeliverShipmentError> for ApiError {
    fn from(e: DeliverShipmentError) -> Self {
        match e {
            DeliverShipmentError::NotFound(id) => shipment_not_found(id),
            DeliverShipmentError::WrongStatus { .. } => {
                ApiError::conflict("invalid_transition", e.to_string())
            }
            DeliverShipmentError::Unexpected(e) => ApiError::internal(e),
        }
    }
}
