//! Operator endpoints for each module's dead letters, under `/admin/<module>/dead-letters`:
//! list, inspect, replay, discard. They exist only when `operator.token` is set, and every
//! call must carry it as `Authorization: Bearer <token>`. Every refused token is logged with
//! the caller's address, and an address that failed [`MAX_FAILURES`] times within
//! [`FAILURE_WINDOW`] is answered 429 until the window ends, right token or not.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use messaging::dead_letters::{self, Change};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use store::ModuleDb;
use subtle::ConstantTimeEq;
use tokio::sync::Notify;
use validator::Validate;

use module_api::{ApiError, ValidQuery};

pub(crate) struct ModuleLetters {
    pub db: ModuleDb,
    /// Wakes the module's consumer to run a replay now.
    pub replays: Arc<Notify>,
}

pub(crate) struct Admin {
    pub token: SecretString,
    pub modules: HashMap<&'static str, ModuleLetters>,
    /// Refused attempts per caller address: how many, since when.
    pub failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Refused tokens an address may send within [`FAILURE_WINDOW`].
pub(crate) const MAX_FAILURES: u32 = 5;
pub(crate) const FAILURE_WINDOW: Duration = Duration::from_secs(60);

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin/{module}/dead-letters")
            .route("", web::get().to(list))
            .route("/{id}", web::get().to(get))
            .route("/{id}/replay", web::post().to(replay))
            .route("/{id}/discard", web::post().to(discard)),
    );
}

impl Admin {
    fn authorize(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let peer = req.peer_addr().map(|a| a.ip());
        let now = Instant::now();
        if let Some(ip) = peer {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            failures.retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
            if let Some((count, since)) = failures.get(&ip)
                && *count >= MAX_FAILURES
            {
                let wait = FAILURE_WINDOW.saturating_sub(now.duration_since(*since));
                return Err(ApiError::too_many(format!(
                    "too many refused operator tokens from this address; retry in {} s",
                    wait.as_secs() + 1
                )));
            }
        }
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let expected = self.token.expose_secret().as_bytes();
        if !given.is_empty() && bool::from(given.as_bytes().ct_eq(expected)) {
            Ok(())
        } else {
            let attempts = match peer {
                Some(ip) => {
                    let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
                    let entry = failures.entry(ip).or_insert((0, now));
                    entry.0 += 1;
                    entry.0
                }
                None => 0,
            };
            tracing::warn!(
                peer = ?peer,
                path = req.path(),
                attempts,
                "refused an operator request: missing or wrong token"
            );
            Err(ApiError::unauthorized(
                "a valid operator bearer token is required",
            ))
        }
    }

    fn module(&self, name: &str) -> Result<&ModuleLetters, ApiError> {
        self.modules.get(name).ok_or_else(|| {
            ApiError::not_found("module_not_found", format!("no module {name} runs here"))
        })
    }
}

#[derive(Debug, Deserialize, Validate)]
struct ListQuery {
    #[validate(range(min = 1, max = 500))]
    limit: Option<u64>,
    after: Option<i64>,
    #[validate(custom(function = "letter_status"))]
    status: Option<String>,
}

fn letter_status(s: &str) -> Result<(), validator::ValidationError> {
    if ["dead", "replay_requested", "replayed", "discarded"].contains(&s) {
        Ok(())
    } else {
        Err(validator::ValidationError::new("invalid_value")
            .with_message("must be dead, replay_requested, replayed or discarded".into()))
    }
}

async fn list(
    admin: web::Data<Admin>,
    req: HttpRequest,
    path: web::Path<String>,
    query: ValidQuery<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    admin.authorize(&req)?;
    let module = admin.module(&path)?;
    let query = query.0;
    let limit = query.limit.unwrap_or(50);
    let items = dead_letters::list(&module.db, query.status.as_deref(), query.after, limit).await?;
    let next_after = if items.len() as u64 == limit {
        items.last().map(|l| l.id)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(serde_json::json!({"items": items, "next_after": next_after})))
}

fn letter_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse().map_err(|_| {
        let mut e = kernel::FieldErrors::new();
        e.add(
            "id",
            "invalid_format",
            "must be a dead letter id (an integer)",
        );
        ApiError::invalid(e)
    })
}

impl Admin {
    /// The module and letter id of a `/admin/{module}/dead-letters/{id}...` request, once
    /// the caller is authorized.
    fn letter<'a>(
        &'a self,
        req: &HttpRequest,
        path: web::Path<(String, String)>,
    ) -> Result<(&'a ModuleLetters, i64), ApiError> {
        self.authorize(req)?;
        let (module, id) = path.into_inner();
        Ok((self.module(&module)?, letter_id(&id)?))
    }
}

async fn get(
    admin: web::Data<Admin>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (module, id) = admin.letter(&req, path)?;
    match dead_letters::get(&module.db, id).await? {
        Some(letter) => Ok(HttpResponse::Ok().json(letter)),
        None => Err(not_found(id)),
    }
}

fn not_found(id: i64) -> ApiError {
    ApiError::not_found("dead_letter_not_found", format!("no dead letter {id}"))
}

/// Answers with the letter as it is after `change`, or why the change did not apply.
async fn settle(change: Change, id: i64, module: &ModuleLetters) -> Result<HttpResponse, ApiError> {
    match change {
        Change::Done => {
            let letter = dead_letters::get(&module.db, id).await?;
            Ok(HttpResponse::Ok().json(letter))
        }
        Change::NotFound => Err(not_found(id)),
        Change::WrongStatus => Err(ApiError::conflict(
            "dead_letter_status",
            format!("dead letter {id} is not in a status that allows this"),
        )),
    }
}

async fn replay(
    admin: web::Data<Admin>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (module, id) = admin.letter(&req, path)?;
    let change = dead_letters::request_replay(&module.db, id).await?;
    if change == Change::Done {
        module.replays.notify_one();
    }
    settle(change, id, module).await
}

async fn discard(
    admin: web::Data<Admin>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (module, id) = admin.letter(&req, path)?;
    let change = dead_letters::discard(&module.db, id).await?;
    settle(change, id, module).await
}
