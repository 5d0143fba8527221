//! Maps each of catalog's use-case errors to an HTTP answer.

use module_api::ApiError;

use crate::use_cases::create_product::CreateProductError;
use crate::use_cases::get_product::GetProductError;
use crate::use_cases::restock::RestockError;
use crate::use_cases::update_product::UpdateProductError;

fn product_not_found(sku: impl std::fmt::Display) -> ApiError {
    ApiError::not_found("product_not_found", format!("no product has sku {sku}"))
}

impl From<CreateProductError> for ApiError {
    fn from(e: CreateProductError) -> Self {
        match e {
            CreateProductError::DuplicateSku(_) => {
                ApiError::conflict("duplicate_sku", e.to_string())
            }
            CreateProductError::Unexpected(e) => ApiError::internal(e),
        }
    }
}

impl From<GetProductError> for ApiError {
    fn from(e: GetProductError) -> Self {
        match e {
            GetProductError::NotFound(sku) => product_not_found(sku),
            GetProductError::Unexpected(e) => ApiError::internal(e),
        }
    }
}

impl From<UpdateProductError> for ApiError {
    fn from(e: UpdateProductError) -> Self {
        match e {
            UpdateProductError::NotFound(sku) => product_not_found(sku),
            UpdateProductError::Unexpected(e) => ApiError::internal(e),
        }
    }
}

impl From<RestockError> for ApiError {
    fn from(e: RestockError) -> Self {
        match e {
            RestockError::NotFound(sku) => product_not_found(sku),
            RestockError::TooMuchStock { .. } => {
                ApiError::unprocessable("stock_limit", e.to_string())
            }
            RestockError::Unexpected(e) => ApiError::internal(e),
        }
    }
}
