//! Extractors that turn a request's JSON body or query string into what a use case takes
//! and, when it is refused, name every field at fault in one 400 answer. A body takes one
//! step: it is deserialized with every type error collected, then [`FromBody`] builds the
//! domain command with the domain's own constructors, gathering every rule error. A query
//! string's few rules are `validator` attributes.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{FromRequest, HttpRequest, web};
use futures::StreamExt;
use kernel::FieldErrors;
use serde::de::DeserializeOwned;
use serde_json::Value;
use validator::Validate;

use super::ApiError;
use crate::validation::flatten_validation_errors;

/// The largest body a route accepts, set once by the host from `server.max_body_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// How long a request body may take to arrive once its headers have (actix times only the
/// headers), set by the host from `server.body_timeout_ms`: a client that trickles its
/// body is answered 408 and let go, instead of holding a worker's connection.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub std::time::Duration);

/// The work the error collection may spend, as bytes parsed: each pass re-reads the whole
/// document, so a large body gets fewer passes (at least one, at most [`MAX_PASSES`]).
const PARSE_BUDGET_BYTES: usize = 256 * 1024;
const MAX_PASSES: usize = 64;

/// What a route takes from a JSON body, built in one step from the body's wire shape.
pub trait FromBody: Sized {
    /// The wire shape: every field optional, so that a missing one is named with the rest.
    type Body: DeserializeOwned;

    /// Builds the value, recording every broken rule in `errors` under its field's path.
    /// `errors` arrives holding the body's type errors, whose fields read as absent here;
    /// the first error recorded for a path is the one kept, so a field refused for its type
    /// is not also called missing. Answers `ApiError::invalid(errors)` unless `errors` is
    /// empty at the end; an error that names no field (nothing to change, say) only then.
    fn from_body(body: Self::Body, errors: FieldErrors) -> Result<Self, ApiError>;
}

/// A JSON body turned into `T` by [`FromBody`], or refused with every field at fault.
#[derive(Debug)]
pub struct Parsed<T>(pub T);

impl<T> FromRequest for Parsed<T>
where
    T: FromBody + 'static,
{
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req
            .app_data::<web::Data<BodyLimit>>()
            .map_or(64 * 1024, |l| l.0);
        let json_content = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_media_type);
        let deadline = req
            .app_data::<web::Data<BodyDeadline>>()
            .map_or(std::time::Duration::from_secs(10), |d| d.0);
        let mut payload = payload.take();
        Box::pin(async move {
            if !json_content {
                return Err(ApiError::new(
                    actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "the body must be JSON, sent with Content-Type: application/json",
                ));
            }
            let read = async {
                let mut body = web::BytesMut::new();
                while let Some(chunk) = payload.next().await {
                    let chunk = chunk.map_err(|e| {
                        ApiError::bad_request(
                            "unreadable_body",
                            format!("the body could not be read: {e}"),
                        )
                    })?;
                    if body.len() + chunk.len() > limit {
                        return Err(too_large(limit));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body)
            };
            let body = tokio::time::timeout(deadline, read).await.map_err(|_| {
                ApiError::new(
                    actix_web::http::StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!("the body did not arrive within {} ms", deadline.as_millis()),
                )
            })??;
            parse_json(&body).map(Parsed)
        })
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body is larger than {limit} bytes"),
    )
}

fn is_json_media_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses a JSON document into `T`, naming every field at fault.
pub fn parse_json<T: FromBody>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "missing_body",
            "the request needs a JSON body",
        ));
    }
    let mut value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the body must be a JSON object",
        ));
    }
    let mut errors = FieldErrors::new();
    // PostgreSQL refuses NUL in text: a string holding one is the caller's mistake, named.
    nul_strings(&value, "", &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    // Each pass names one field with the wrong type and drops it, so the next pass can find
    // the next one. Each pass re-reads the whole document: a large one gets fewer passes.
    let passes = (PARSE_BUDGET_BYTES / body.len().max(1)).clamp(1, MAX_PASSES);
    for _ in 0..passes {
        match serde_path_to_error::deserialize::<_, T::Body>(&value) {
            Ok(parsed) => return T::from_body(parsed, errors),
            Err(e) => {
                let path = e.path().to_string();
                let message = describe_serde_error(&e.inner().to_string());
                if let Some(missing) = missing_field(&message) {
                    errors.add(join(&path, missing), "required", "is required");
                    return Err(ApiError::invalid(errors));
                }
                if path == "." || !remove_path(&mut value, e.path()) {
                    errors.add(
                        if path == "." { "body".into() } else { path },
                        "invalid_type",
                        message,
                    );
                    return Err(ApiError::invalid(errors));
                }
                errors.add(path, "invalid_type", message);
            }
        }
    }
    Err(ApiError::invalid(errors))
}

/// Names every string (or object key) holding a NUL character.
fn nul_strings(value: &Value, path: &str, errors: &mut FieldErrors) {
    const MESSAGE: &str = "must not contain the NUL character (\\u0000)";
    match value {
        Value::String(s) if s.contains('\0') => errors.add(
            if path.is_empty() { "body" } else { path },
            "invalid_character",
            MESSAGE,
        ),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                nul_strings(item, &format!("{path}[{i}]"), errors);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let here = join(path, key);
                if key.contains('\0') {
                    errors.add(here.clone(), "invalid_character", MESSAGE);
                }
                nul_strings(item, &here, errors);
            }
        }
        _ => {}
    }
}

fn validate<T: Validate>(parsed: T, mut errors: FieldErrors) -> Result<T, ApiError> {
    if let Err(e) = parsed.validate() {
        for (path, error) in flatten_validation_errors(&e).iter() {
            // A field already refused for its type was dropped, and would now read as
            // missing: keep the type error.
            if !errors.contains(path) {
                errors.add(path, error.code.clone(), error.message.clone());
            }
        }
    }
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(ApiError::invalid(errors))
    }
}

fn join(parent: &str, field: &str) -> String {
    if parent.is_empty() || parent == "." {
        field.to_owned()
    } else {
        format!("{parent}.{field}")
    }
}

fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
}

/// serde's message without its position, in the project's words where they are clearer.
fn describe_serde_error(raw: &str) -> String {
    let message = raw.split(" at line ").next().unwrap_or(raw);
    let Some((found, expected)) = message.split_once(", expected ") else {
        return message.to_owned();
    };
    let expected = match expected {
        "i64" | "i32" | "u32" | "u64" | "u16" | "i16" | "u8" | "usize" => "an integer",
        "f64" | "f32" => "a number",
        "a boolean" | "bool" => "true or false",
        "a sequence" => "an array",
        other if other.starts_with("struct ") => "an object",
        other => other,
    };
    let found = found
        .strip_prefix("invalid type: ")
        .or_else(|| found.strip_prefix("invalid value: "))
        .unwrap_or(found);
    format!("must be {expected}, not {found}")
}

/// Removes the value at `path` from `root`; false when there is nothing to remove.
fn remove_path(root: &mut Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut current = root;
    for segment in parents {
        current = match (segment, current) {
            (Segment::Map { key }, Value::Object(map)) => match map.get_mut(key.as_str()) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Seq { index }, Value::Array(items)) => match items.get_mut(*index) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, current) {
        (Segment::Map { key }, Value::Object(map)) => map.remove(key.as_str()).is_some(),
        // An element of the wrong type in an array: blank it so the array still parses
        // where its elements are optional, else the next pass reports the array itself.
        (Segment::Seq { index }, Value::Array(items)) if *index < items.len() => {
            items[*index] = Value::Object(Default::default());
            true
        }
        _ => false,
    }
}

/// A query string that deserialized and passed its checks.
#[derive(Debug)]
pub struct ValidQuery<T>(pub T);

impl<T> FromRequest for ValidQuery<T>
where
    T: DeserializeOwned + Validate + 'static,
{
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(parse_query(req.query_string()).map(ValidQuery))
    }
}

pub fn parse_query<T: DeserializeOwned + Validate>(query: &str) -> Result<T, ApiError> {
    let deserializer =
        serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    let parsed: T = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let mut errors = FieldErrors::new();
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let path = if path == "." {
            "query".to_owned()
        } else {
            path
        };
        let message = match message.as_str() {
            "invalid digit found in string" | "number too large to fit in target type" => {
                "must be a whole number in range".to_owned()
            }
            _ => message,
        };
        errors.add(path, "invalid_type", message);
        ApiError::invalid(errors)
    })?;
    validate(parsed, FieldErrors::new())
}

/// Parses a UUID path segment, naming the parameter when it is not one.
pub fn uuid_param(name: &str, raw: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|_| {
        let mut errors = FieldErrors::new();
        errors.add(name, "invalid_format", "must be a UUID");
        ApiError::invalid(errors)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct LineBody {
        quantity: Option<i64>,
    }

    #[derive(Debug, Deserialize)]
    struct OrderBody {
        name: Option<String>,
        price: Option<i64>,
        lines: Option<Vec<LineBody>>,
    }

    #[derive(Debug)]
    struct Order {
        lines: Vec<i64>,
    }
    impl FromBody for Order {
        type Body = OrderBody;

        fn from_body(body: OrderBody, mut e: FieldErrors) -> Result<Self, ApiError> {
            if e.required("name", body.name).is_some_and(|n| n.is_empty()) {
                e.add("name", "length", "must not be empty");
            }
            if e.required("price", body.price).is_some_and(|p| p < 0) {
                e.add("price", "range", "must not be negative");
            }
            let mut lines = Vec::new();
            for (i, line) in e
                .required("lines", body.lines)
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                let path = format!("lines[{i}].quantity");
                match e.required(&path, line.quantity) {
                    Some(q) if q < 1 => e.add(path, "range", "must be at least 1"),
                    Some(q) => lines.push(q),
                    None => {}
                }
            }
            e.into_result().map_err(ApiError::invalid)?;
            Ok(Order { lines })
        }
    }

    fn fields(body: &str) -> Vec<(String, String)> {
        match parse_json::<Order>(body.as_bytes()) {
            Ok(order) => panic!("expected a refusal, got {order:?}"),
            Err(e) => e
                .fields()
                .map(|f| {
                    f.iter()
                        .map(|(p, e)| (p.to_owned(), e.code.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    #[test]
    fn every_wrong_type_and_every_broken_rule_is_named() {
        let found =
            fields(r#"{"name": 5, "price": "ten", "lines": [{"quantity": "x"}, {"quantity": 0}]}"#);
        assert_eq!(
            found,
            [
                ("lines[0].quantity".into(), "invalid_type".into()),
                ("lines[1].quantity".into(), "range".into()),
                ("name".into(), "invalid_type".into()),
                ("price".into(), "invalid_type".into()),
            ]
        );
    }

    #[test]
    fn missing_fields_are_required() {
        let found = fields("{}");
        let paths: Vec<_> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["lines", "name", "price"]);
        assert!(found.iter().all(|(_, code)| code == "required"));
    }

    #[test]
    fn malformed_and_non_object_bodies_are_refused() {
        for (body, code) in [
            ("", "missing_body"),
            ("{", "malformed_json"),
            ("[]", "invalid_body"),
            ("3", "invalid_body"),
        ] {
            let error = parse_json::<Order>(body.as_bytes()).expect_err(body);
            assert_eq!(error.code(), code, "{body:?}");
        }
    }

    #[test]
    fn a_valid_body_parses() {
        let order: Order =
            parse_json(br#"{"name": "a", "price": 0, "lines": [{"quantity": 1}]}"#).expect("valid");
        assert_eq!(order.lines, [1]);
    }

    #[test]
    fn json_media_types() {
        for (value, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("application/problem+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            assert_eq!(is_json_media_type(value), ok, "{value}");
        }
    }

    #[test]
    fn a_nul_character_in_any_string_is_named() {
        let body =
            r#"{"name": "Te\u0000a", "price": 1, "lines": [{"quantity": 1}], "x\u0000": "y"}"#;
        let named = fields(body);
        assert!(
            named.contains(&("name".into(), "invalid_character".into())),
            "{named:?}"
        );
        assert!(
            named.contains(&("x\u{0}".into(), "invalid_character".into())),
            "{named:?}"
        );
    }

    /// A 64 KiB body with 64 wrongly typed fields: each naming pass re-reads the whole
    /// body, so a large body gets few passes, and the work stays bounded.
    #[test]
    fn a_large_body_gets_few_naming_passes() {
        let mut lines: Vec<String> = (0..64).map(|_| r#"{"quantity":"x"}"#.to_owned()).collect();
        while lines.iter().map(|l| l.len() + 1).sum::<usize>() < 64 * 1024 {
            lines.push(r#"{"quantity":1}"#.to_owned());
        }
        let body = format!(r#"{{"name":"n","price":1,"lines":[{}]}}"#, lines.join(","));
        let named = fields(&body);
        let passes = PARSE_BUDGET_BYTES / body.len();
        assert!(
            !named.is_empty() && named.len() <= passes && passes < 64,
            "{} fields named in at most {passes} passes",
            named.len()
        );
        let small = r#"{"name": 1, "price": "x", "lines": [{"quantity": "y"}]}"#;
        assert_eq!(
            fields(small).len(),
            3,
            "a small body still gets every field named"
        );
    }
}
