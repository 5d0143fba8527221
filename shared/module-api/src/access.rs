//! Who may call a route, and who is calling. Each route declares who may call it beside its
//! path ([`RouteAccess::allow`]): a missing or invalid bearer token is 401 with
//! `WWW-Authenticate`, a valid token without the role is 403, and the verified [`Caller`]
//! is handed to the handler. The host verifies tokens (how, and with which keys, is its
//! business, see [`Authenticate`]); a module only names the role a route asks for.

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{FromRequest, HttpMessage, HttpRequest, Route, web};
use futures::future::BoxFuture;

use crate::http::ApiError;

/// A role a token may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Places orders and reads or cancels its own.
    Customer,
    /// Manages the catalog, runs fulfillment, reads any order.
    Staff,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Staff => "staff",
        }
    }

    pub fn parse(word: &str) -> Option<Role> {
        match word {
            "customer" => Some(Role::Customer),
            "staff" => Some(Role::Staff),
            _ => None,
        }
    }

    pub(crate) fn bit(self) -> u8 {
        match self {
            Role::Customer => 1,
            Role::Staff => 2,
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, with or without a token (the token is not even read).
    Public,
    /// A verified token with the customer role.
    Customer,
    /// A verified token with the staff role.
    Staff,
    /// A verified token with either role; the handler scopes what a customer sees.
    CustomerOrStaff,
}

impl Access {
    fn admits(self, roles: u8) -> bool {
        let need = match self {
            Access::Public => return true,
            Access::Customer => Role::Customer.bit(),
            Access::Staff => Role::Staff.bit(),
            Access::CustomerOrStaff => Role::Customer.bit() | Role::Staff.bit(),
        };
        roles & need != 0
    }
}

/// The verified caller of a request, for handlers of routes that are not public.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's `sub`.
    pub subject: String,
    roles: u8,
}

impl Caller {
    /// The caller `authenticate` found: `subject` with `roles` (roles it does not know
    /// were already dropped).
    pub fn new(subject: impl Into<String>, roles: impl IntoIterator<Item = Role>) -> Caller {
        Caller {
            subject: subject.into(),
            roles: roles.into_iter().fold(0, |bits, r| bits | r.bit()),
        }
    }

    pub fn has(&self, role: Role) -> bool {
        self.roles & role.bit() != 0
    }

    /// Staff see everything; anyone else only what `subject` owns.
    pub fn is_staff(&self) -> bool {
        self.has(Role::Staff)
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        // Only routes declared with a role have a caller; a handler of a public route
        // asking for one is refused rather than served without one.
        std::future::ready(
            req.extensions()
                .get::<Caller>()
                .cloned()
                .ok_or_else(|| ApiError::unauthorized("a bearer token is required")),
        )
    }
}

/// What verifies a bearer token: the host installs one as `web::Data<dyn Authenticate>`.
/// The error is the reason, for the log; the caller only learns that the token was refused.
pub trait Authenticate: Send + Sync + 'static {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, String>>;
}

/// Declares who may call a route: `web::post().to(place).allow(Access::Customer)`.
pub trait RouteAccess {
    fn allow(self, access: Access) -> Route;
}

impl RouteAccess for Route {
    fn allow(self, access: Access) -> Route {
        if access == Access::Public {
            return self;
        }
        self.wrap(from_fn(move |req, next| check(access, req, next)))
    }
}

async fn check(
    access: Access,
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    match authorize(access, req.request()).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.call(req).await
        }
        Err(e) => Ok(req.error_response(e)),
    }
}

async fn authorize(access: Access, req: &HttpRequest) -> Result<Caller, ApiError> {
    let Some(auth) = req.app_data::<web::Data<dyn Authenticate>>().cloned() else {
        return Err(ApiError::internal(anyhow::anyhow!(
            "a route asks for a role but the host installed no authenticator"
        )));
    };
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(header) = header else {
        return Err(ApiError::unauthorized("a bearer token is required"));
    };
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .unwrap_or("");
    let caller = auth.authenticate(token).await.map_err(|e| {
        tracing::info!(reason = %e, "bearer token refused");
        ApiError::invalid_token("the bearer token is invalid or expired")
    })?;
    if access.admits(caller.roles) {
        Ok(caller)
    } else {
        Err(ApiError::forbidden(match access {
            Access::Staff => "this needs the staff role",
            Access::Customer => "this needs the customer role",
            _ => "this needs the customer or staff role",
        }))
    }
}
