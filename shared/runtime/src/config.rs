//! Typed, validated configuration: layered files (`base`, then one environment such as
//! `local`, `test` or `production`), then environment variables `APP__SECTION__KEY`.
//! A bad or missing setting stops start-up with a message naming the key. Secrets are read
//! from the environment only and are redacted wherever they are printed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use kernel::FieldErrors;
use secrecy::SecretString;
use serde::Deserialize;
use validator::Validate;

use module_api::flatten_validation_errors;

/// Keys that hold secrets: they may come from the environment only, never from a file,
/// and their values are taken verbatim (never parsed as a number or a boolean). A prefix
/// ending in `.` covers every key below it. A module's own settings hold a secret when the
/// key's last part is named like one (see [`is_secret_key`]).
pub const SECRET_KEYS: &[&str] = &[
    "database.postgres.owner_password",
    "database.postgres.role_passwords.",
    "bus.redis.password",
    "operator.token",
    "auth.hs256_secret",
];

/// The last parts of a module's setting that make it a secret
/// (`modules.checkout.payment.api_key`).
const SECRET_NAMES: &[&str] = &["password", "secret", "token", "api_key"];

/// Whether a dotted, lower-case key holds a secret.
pub fn is_secret_key(key: &str) -> bool {
    let listed = SECRET_KEYS.iter().any(|s| match s.strip_suffix('.') {
        Some(table) => key == table || key.starts_with(s),
        None => key == *s,
    });
    let module_secret = key.starts_with("modules.")
        && key
            .rsplit('.')
            .next()
            .is_some_and(|last| SECRET_NAMES.iter().any(|n| last.ends_with(n)));
    listed || module_secret
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[validate(nested)]
    pub server: ServerSettings,
    #[validate(nested)]
    pub database: DatabaseSettings,
    #[validate(nested)]
    pub telemetry: TelemetrySettings,
    #[validate(nested)]
    pub bus: BusSettings,
    #[validate(nested)]
    pub messaging: messaging::MessagingSettings,
    pub operator: OperatorSettings,
    #[validate(nested)]
    pub auth: AuthSettings,
    pub modules: ModulesSettings,
    /// The environment the settings were loaded for (`local`, `test`, `production`).
    #[serde(skip)]
    pub environment: String,
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    #[validate(length(min = 1, message = "must name an interface, such as 127.0.0.1"))]
    pub host: String,
    /// 0 picks a free port (tests use it).
    pub port: u16,
    /// The admin port: `/metrics` only, on `host`, so scrapes need not pass through the
    /// public ingress and the public port cannot be used to read them. 0 picks a free
    /// port, logged at start-up (tests, and a developer running several processes).
    pub admin_port: u16,
    /// HTTP worker threads; 0 means one per core.
    #[validate(range(max = 256))]
    pub workers: usize,
    /// The largest request body accepted, in bytes.
    #[validate(range(min = 1024, max = 16777216))]
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive after its headers; a slower one is 408.
    #[validate(range(min = 100, max = 600000))]
    pub body_timeout_ms: u64,
    #[validate(range(min = 1, max = 3600))]
    pub keep_alive_secs: u64,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[validate(range(min = 1, max = 600))]
    pub shutdown_timeout_secs: u64,
}

/// A setting that takes one of a few words; a wrong word is refused listing the right ones.
macro_rules! word_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
        #[serde(try_from = "String")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            pub fn as_str(&self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(word: String) -> Result<Self, String> {
                match word.as_str() {
                    $($word => Ok($name::$variant),)+
                    _ => Err(format!(
                        "{word:?} is not one of {}",
                        [$($word),+].join(", ")
                    )),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

word_enum!(Backend {
    Sqlite = "sqlite",
    Postgres = "postgres",
});

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub backend: Backend,
    /// Run each module's pending migrations at start-up. Production runs `app migrate`
    /// from the deploy pipeline instead.
    pub migrate_on_start: bool,
    #[validate(nested)]
    pub sqlite: SqliteSettings,
    #[validate(nested)]
    pub postgres: PostgresSettings,
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct SqliteSettings {
    /// The directory holding one database file per module (`<dir>/<module>.db`).
    pub dir: PathBuf,
    #[validate(range(min = 1, max = 64))]
    pub max_connections: u32,
    #[validate(range(min = 0, max = 60000))]
    pub busy_timeout_ms: u64,
    /// Prepared statements each pooled connection keeps ready (least recently used dropped
    /// first). Every connection holds its own, for as long as it lives, and a statement
    /// over a batch (a multi-row insert, an `IN` list) is a new statement for every batch
    /// size: the cache is what a pool keeps of a burst of load once the load has passed.
    #[validate(range(min = 0, max = 10000))]
    pub statement_cache_capacity: usize,
    /// How long a pooled connection lives before it is closed on its return to the pool
    /// (and opened again when wanted). The pool hands its idle connections out in turn, so
    /// the background loops' trickle of work keeps every connection a burst opened in use,
    /// with the prepared statements each holds; a lifetime lets the pool shrink back to
    /// what the trickle needs once the burst has passed.
    #[validate(range(min = 1, max = 86400))]
    pub max_lifetime_secs: u64,
}

word_enum!(SslMode {
    Disable = "disable",
    Prefer = "prefer",
    /// Encrypted, the server's certificate not checked.
    Require = "require",
    /// Encrypted, the server's certificate checked against the CA (`ssl_root_cert`).
    VerifyCa = "verify-ca",
    /// As `verify-ca`, and the certificate must name `host`.
    VerifyFull = "verify-full",
});

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    #[validate(length(min = 1))]
    pub host: String,
    pub port: u16,
    #[validate(length(min = 1, max = 63))]
    pub database: String,
    /// The role that owns the schemas and runs migrations.
    #[validate(length(min = 1, max = 63))]
    pub owner_user: String,
    /// From `APP__DATABASE__POSTGRES__OWNER_PASSWORD` only.
    pub owner_password: Option<SecretString>,
    /// Each module connects as `<role_prefix><module>`, a role with rights on its own
    /// schema only.
    #[validate(custom(function = "crate::validation::identifier_prefix"))]
    pub role_prefix: String,
    /// From `APP__DATABASE__POSTGRES__ROLE_PASSWORDS__<MODULE>` only.
    #[serde(default)]
    pub role_passwords: BTreeMap<String, SecretString>,
    /// Create the module roles when missing (needs CREATEROLE); off where a DBA manages roles.
    pub provision_roles: bool,
    /// Pool size of each module's role.
    #[validate(range(min = 1, max = 200))]
    pub max_connections: u32,
    #[validate(range(min = 100, max = 120000))]
    pub acquire_timeout_ms: u64,
    /// Prepared statements each pooled connection keeps ready (least recently used dropped
    /// first). Every connection holds its own, for as long as it lives, and a statement
    /// over a batch (a multi-row insert, an `IN` list) is a new statement for every batch
    /// size: the cache is what a pool keeps of a burst of load once the load has passed.
    #[validate(range(min = 0, max = 10000))]
    pub statement_cache_capacity: usize,
    /// How long a pooled connection lives before it is closed on its return to the pool
    /// (and opened again when wanted). The pool hands its idle connections out in turn, so
    /// the background loops' trickle of work keeps every connection a burst opened in use,
    /// with the prepared statements each holds; a lifetime lets the pool shrink back to
    /// what the trickle needs once the burst has passed.
    #[validate(range(min = 1, max = 86400))]
    pub max_lifetime_secs: u64,
    #[validate(range(min = 0, max = 3600000))]
    pub statement_timeout_ms: u64,
    /// How often each module analyzes its tables that outgrew their planner statistics,
    /// rather than wait for autovacuum (`runtime::statistics`); 0: never.
    #[validate(range(min = 0, max = 3600000))]
    pub refresh_statistics_ms: u64,
    pub ssl_mode: SslMode,
    /// The CA certificate (PEM) the server's certificate is checked against with
    /// `verify-ca` and `verify-full`; unset, the well-known public CAs.
    pub ssl_root_cert: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// A tracing filter such as `info` or `info,sqlx=warn`; `RUST_LOG` overrides it.
    #[validate(custom(function = "crate::validation::log_filter"))]
    pub level: String,
    /// Where spans are exported over OTLP (HTTP/protobuf), the full URL such as
    /// `http://collector:4318/v1/traces` (or `https://`); empty: nothing is exported.
    #[validate(custom(function = "crate::validation::otlp_endpoint"))]
    pub otlp_endpoint: String,
    /// A CA certificate file (PEM) trusted for an `https://` collector besides the system's
    /// roots: a private CA.
    pub otlp_ca_file: Option<PathBuf>,
}

word_enum!(BusKind {
    /// Events travel between modules of this process through each consumer's inbox queue.
    Local = "local",
    /// Every event travels over Redis Streams, even between modules of this process.
    Redis = "redis",
    /// Events between modules of this process travel in-process, the others over Redis
    /// Streams (a module runs in another process).
    Hybrid = "hybrid",
});

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct BusSettings {
    pub kind: BusKind,
    /// This process's stable name: it holds the claims of its deliveries and the relay
    /// lease, and names its Redis consumers. Empty means the host name. Two processes
    /// running at once must not share it.
    #[validate(length(max = 100))]
    pub instance: String,
    #[validate(nested)]
    pub redis: RedisSettings,
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:port/db` without credentials; the password comes from
    /// `APP__BUS__REDIS__PASSWORD`.
    #[validate(custom(function = "crate::validation::redis_url"))]
    pub url: String,
    /// The Redis ACL user to log in as; empty: the default user.
    #[validate(length(max = 128))]
    pub username: String,
    pub password: Option<SecretString>,
    /// Prefix of every key this system writes, so several deployments can share a server.
    #[validate(length(min = 1, max = 64))]
    pub namespace: String,
    /// Partitions of each producer's stream: the unit of work sharing between instances
    /// of a consuming module. Every process of a deployment must use the same number.
    #[validate(range(min = 1, max = 256))]
    pub partitions: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorSettings {
    /// Bearer token for the operator endpoints (dead letters). Unset means they are off.
    pub token: Option<SecretString>,
}

/// How callers' bearer tokens are verified (see `runtime::auth`).
#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The `iss` every token must carry: the identity provider's issuer.
    #[validate(length(min = 1))]
    pub issuer: String,
    /// The `aud` every token must carry: this API.
    #[validate(length(min = 1))]
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[validate(range(max = 300))]
    pub leeway_secs: u64,
    /// A JWK set file with the identity provider's public keys (RS256, Ed25519).
    /// Production needs this or `jwks_url`.
    pub jwks_file: Option<PathBuf>,
    /// The identity provider's JWK set URL (`https://…/.well-known/jwks.json`), fetched at
    /// start-up and cached: the alternative to `jwks_file`. Production refuses `http://`
    /// unless `jwks_allow_http` says the network is trusted.
    #[validate(custom(function = "crate::validation::jwks_url"))]
    pub jwks_url: Option<String>,
    /// A CA certificate file (PEM) trusted for an `https://` `jwks_url` besides the system's
    /// roots: the identity provider's private CA.
    pub jwks_ca_file: Option<PathBuf>,
    /// Production only: accept an `http://` `jwks_url`, for a TLS sidecar on localhost or a
    /// network trusted not to alter the keys. Elsewhere `http://` is always accepted.
    pub jwks_allow_http: bool,
    /// How long the keys fetched from `jwks_url` are used before they are fetched again.
    #[validate(range(min = 1, max = 86400))]
    pub jwks_max_age_secs: u64,
    /// The least time between two fetches of `jwks_url`: a token naming a key id the set
    /// lacks fetches it again at once, but never sooner than this after the last fetch.
    #[validate(range(min = 1, max = 3600))]
    pub jwks_refetch_secs: u64,
    /// HS256 secret of local development and tests, from `APP__AUTH__HS256_SECRET` only;
    /// unset, they use a fixed development secret. Production refuses it.
    pub hs256_secret: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModulesSettings {
    /// The modules this process runs.
    pub enabled: Vec<String>,
    /// One table per module with that module's own settings, checked by the module.
    #[serde(flatten)]
    pub sections: BTreeMap<String, serde_json::Value>,
}

impl BusSettings {
    /// The instance name, the host name when none is set.
    pub fn instance_name(&self) -> String {
        if !self.instance.is_empty() {
            return self.instance.clone();
        }
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "shop".to_owned())
    }
}

impl ModulesSettings {
    /// The settings table of one module (`[modules.<name>]`), or an empty table.
    pub fn section(&self, module: &str) -> serde_json::Value {
        self.sections
            .get(module)
            .cloned()
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()))
    }
}

/// Why the configuration could not be loaded. Each variant names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "configuration directory {0} has no base.toml (set APP_CONFIG_DIR to the folder holding it)"
    )]
    MissingBase(PathBuf),
    #[error("unknown environment {0:?}: expected one of local, test, production (APP_ENVIRONMENT)")]
    UnknownEnvironment(String),
    #[error("{key} is a secret and must come from the environment ({env}), not from {file}")]
    SecretInFile {
        key: String,
        env: String,
        file: String,
    },
    #[error("environment variable {0} is not valid UTF-8")]
    NotUnicode(String),
    /// The config crate's own message, with every value that may be a secret replaced by
    /// `[REDACTED]` (see [`redact`]).
    #[error("{0}")]
    Load(String),
    #[error("invalid settings: {0}")]
    Invalid(FieldErrors),
}

/// Where settings come from. Tests pass their own environment map instead of the process's.
pub struct Sources<'a> {
    pub dir: &'a Path,
    pub environment: &'a str,
    /// `None` reads the process environment.
    pub env_vars: Option<HashMap<String, String>>,
}

pub const ENVIRONMENTS: &[&str] = &["local", "test", "production"];

impl Settings {
    /// Reads `APP_CONFIG_DIR` (default `config`) and `APP_ENVIRONMENT` (default `local`).
    pub fn load_from_process_env() -> Result<Settings, ConfigError> {
        let dir = std::env::var("APP_CONFIG_DIR").unwrap_or_else(|_| "config".into());
        Settings::load_from_process_env_in(&dir)
    }

    /// Reads the files of `dir` for `APP_ENVIRONMENT` (default `local`), then the process
    /// environment.
    pub fn load_from_process_env_in(dir: &str) -> Result<Settings, ConfigError> {
        let environment = std::env::var("APP_ENVIRONMENT").unwrap_or_else(|_| "local".into());
        Settings::load(Sources {
            dir: Path::new(&dir),
            environment: &environment,
            env_vars: None,
        })
    }

    pub fn load(sources: Sources<'_>) -> Result<Settings, ConfigError> {
        if !ENVIRONMENTS.contains(&sources.environment) {
            return Err(ConfigError::UnknownEnvironment(sources.environment.into()));
        }
        let base = sources.dir.join("base.toml");
        if !base.is_file() {
            return Err(ConfigError::MissingBase(sources.dir.to_path_buf()));
        }
        let env_file = sources.dir.join(format!("{}.toml", sources.environment));

        let mut file_keys = std::collections::BTreeSet::new();
        for file in [&base, &env_file] {
            file_keys.extend(reject_secrets_in_file(file)?);
        }

        // Secrets are taken verbatim: `007` stays `007` and `TRUE` stays `TRUE`. Every other
        // key may be a number, a boolean or a list, parsed from its text.
        let vars = match sources.env_vars {
            Some(vars) => vars,
            None => process_env_vars()?,
        };
        let mut secrets = HashMap::new();
        let mut others = HashMap::new();
        // Values never echoed in an error: secrets, and values of variables that name no key
        // of the files (a misspelt secret's variable, a secret's table set to a string).
        let mut sensitive = Vec::new();
        for (var, value) in vars {
            let Some(key) = env_key(&var) else {
                continue;
            };
            if is_secret_key(&key) || !file_keys.contains(&key) {
                sensitive.push(value.clone());
            }
            if is_secret_key(&key) {
                secrets.insert(var, value);
            } else {
                others.insert(var, value);
            }
        }
        let parsed = config::Environment::with_prefix("APP")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("modules.enabled")
            .source(Some(others));
        let verbatim = config::Environment::with_prefix("APP")
            .prefix_separator("__")
            .separator("__")
            .source(Some(secrets));
        let loaded = config::Config::builder()
            .add_source(config::File::from(base.as_path()))
            .add_source(config::File::from(env_file.as_path()).required(false))
            .add_source(parsed)
            .add_source(verbatim)
            .build()
            .and_then(|raw| raw.try_deserialize::<Settings>());
        let mut settings =
            loaded.map_err(|e| ConfigError::Load(redact(&e.to_string(), &sensitive)))?;
        settings.environment = sources.environment.to_owned();
        settings.check()?;
        Ok(settings)
    }

    /// Checks what types cannot express: ranges, formats, and rules across keys.
    pub fn check(&self) -> Result<(), ConfigError> {
        let mut errors = match self.validate() {
            Ok(()) => FieldErrors::new(),
            Err(e) => flatten_validation_errors(&e),
        };
        if self.modules.enabled.is_empty() {
            errors.add(
                "modules.enabled",
                "required",
                "must name at least one module",
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, name) in self.modules.enabled.iter().enumerate() {
            if !kernel::is_valid_module_name(name) {
                errors.add(
                    format!("modules.enabled[{i}]"),
                    "invalid_format",
                    format!("{name:?} is not a module name ([a-z][a-z0-9_]*)"),
                );
            } else if !seen.insert(name) {
                errors.add(
                    format!("modules.enabled[{i}]"),
                    "duplicate",
                    format!("{name} is listed twice"),
                );
            }
        }
        if self.server.admin_port != 0 && self.server.admin_port == self.server.port {
            errors.add(
                "server.admin_port",
                "conflict",
                "must differ from server.port (or be 0 to pick a free port)",
            );
        }
        for module in self.database.postgres.role_passwords.keys() {
            if !kernel::is_valid_module_name(module) {
                errors.add(
                    format!("database.postgres.role_passwords.{module}"),
                    "invalid_format",
                    "must be keyed by a module name",
                );
            }
        }
        self.check_auth(&mut errors);
        if let Some(file) = &self.telemetry.otlp_ca_file
            && !self.telemetry.otlp_endpoint.starts_with("https://")
        {
            errors.add(
                "telemetry.otlp_ca_file",
                "conflict",
                format!(
                    "{} is used with an https:// telemetry.otlp_endpoint only",
                    file.display()
                ),
            );
        }
        let pg = &self.database.postgres;
        if let Some(cert) = &pg.ssl_root_cert
            && !matches!(pg.ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull)
        {
            errors.add(
                "database.postgres.ssl_root_cert",
                "conflict",
                format!(
                    "{} is used with ssl_mode verify-ca or verify-full only (ssl_mode is {})",
                    cert.display(),
                    pg.ssl_mode
                ),
            );
        }
        if !self.bus.redis.username.is_empty() && self.bus.redis.password.is_none() {
            errors.add(
                "bus.redis.username",
                "required",
                "a Redis ACL user needs its password in APP__BUS__REDIS__PASSWORD",
            );
        }
        if let Some(token) = &self.operator.token
            && let Err(problem) = check_operator_token(secrecy::ExposeSecret::expose_secret(token))
        {
            errors.add("operator.token", "weak", problem);
        }
        errors.into_result().map_err(ConfigError::Invalid)
    }

    /// Production verifies asymmetric signatures only; a shared secret is for local
    /// development and tests, and must be long enough not to be guessed.
    fn check_auth(&self, errors: &mut FieldErrors) {
        use secrecy::ExposeSecret;
        let auth = &self.auth;
        if auth.jwks_file.is_some() && auth.jwks_url.is_some() {
            errors.add(
                "auth.jwks_url",
                "conflict",
                "set auth.jwks_file or auth.jwks_url, not both",
            );
        }
        let https = auth
            .jwks_url
            .as_deref()
            .is_some_and(|url| url.starts_with("https://"));
        if let Some(file) = &auth.jwks_ca_file
            && !https
        {
            errors.add(
                "auth.jwks_ca_file",
                "conflict",
                format!(
                    "{} is used with an https:// auth.jwks_url only",
                    file.display()
                ),
            );
        }
        if self.environment == "production"
            && !auth.jwks_allow_http
            && auth
                .jwks_url
                .as_deref()
                .is_some_and(|url| url.starts_with("http://"))
        {
            errors.add(
                "auth.jwks_url",
                "insecure",
                "production fetches the keys every token is checked with over https:// only: \
                 use the provider's https:// URL (its CA in auth.jwks_ca_file if it is a \
                 private one), or set auth.jwks_allow_http = true (APP__AUTH__JWKS_ALLOW_HTTP) \
                 if this http:// URL is a TLS sidecar on localhost or a trusted network",
            );
        }
        if auth.jwks_refetch_secs > auth.jwks_max_age_secs {
            errors.add(
                "auth.jwks_refetch_secs",
                "conflict",
                "must not exceed auth.jwks_max_age_secs",
            );
        }
        if self.environment == "production" {
            if auth.jwks_file.is_none() && auth.jwks_url.is_none() {
                errors.add(
                    "auth.jwks_file",
                    "required",
                    "production verifies tokens with the identity provider's public keys: \
                     set APP__AUTH__JWKS_FILE to a JWK set file or APP__AUTH__JWKS_URL to \
                     the provider's JWK set URL",
                );
            }
            if auth.hs256_secret.is_some() {
                errors.add(
                    "auth.hs256_secret",
                    "not_allowed",
                    "a shared HS256 secret is for local development and tests only; \
                     production verifies RS256 or EdDSA signatures (auth.jwks_file)",
                );
            }
        }
        if let Some(secret) = &auth.hs256_secret
            && secret.expose_secret().len() < 32
        {
            errors.add(
                "auth.hs256_secret",
                "too_short",
                "must be at least 32 bytes long",
            );
        }
    }
}

/// The operator token guards replays and discards of dead letters: it must carry at least
/// 256 bits (32 bytes) of entropy, estimated from its length and the kinds of characters it
/// uses (`openssl rand -hex 32` or `openssl rand -base64 32` both pass). The message never
/// contains the token.
pub fn check_operator_token(token: &str) -> Result<(), String> {
    let mut pool = 0u32;
    if token.bytes().any(|b| b.is_ascii_digit()) {
        pool += 10;
    }
    if token.bytes().any(|b| b.is_ascii_lowercase()) {
        pool += 26;
    }
    if token.bytes().any(|b| b.is_ascii_uppercase()) {
        pool += 26;
    }
    if token.bytes().any(|b| !b.is_ascii_alphanumeric()) {
        pool += 32;
    }
    let distinct = token
        .bytes()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let bits = token.len() as f64 * f64::from(pool.max(1)).log2();
    if bits < 256.0 || distinct < 16 {
        Err(format!(
            "the operator token must carry at least 32 bytes of entropy (this one: about {} \
             bits over {distinct} distinct characters); make one with `openssl rand -hex 32`",
            bits as u32
        ))
    } else {
        Ok(())
    }
}

/// The `APP__` variables of this process. A value that is not UTF-8 is refused naming the
/// variable only (the config crate would print the value).
fn process_env_vars() -> Result<HashMap<String, String>, ConfigError> {
    let mut vars = HashMap::new();
    for (name, value) in std::env::vars_os() {
        let Ok(name) = name.into_string() else {
            continue;
        };
        if env_key(&name).is_none() {
            continue;
        }
        let value = value
            .into_string()
            .map_err(|_| ConfigError::NotUnicode(name.clone()))?;
        vars.insert(name, value);
    }
    Ok(vars)
}

/// The dotted key an `APP__SECTION__KEY` variable sets, as the config crate reads it.
fn env_key(var: &str) -> Option<String> {
    let lower = var.to_lowercase();
    lower
        .strip_prefix("app__")
        .map(|rest| rest.replace("__", "."))
}

/// Replaces each of `values` in an error message by `[REDACTED]`: quoted the way serde and
/// the config crate quote values (`"v"`, `` `v` ``, also lower-cased, as a boolean is
/// shown), and bare when it is long enough not to match ordinary words of the message.
pub fn redact(message: &str, values: &[String]) -> String {
    let mut values: Vec<&String> = values.iter().filter(|v| !v.is_empty()).collect();
    // The longest first, so that a value holding another is replaced whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out = message.to_owned();
    for value in values {
        let lower = value.to_lowercase();
        for form in [
            format!("{value:?}"),
            format!("`{value}`"),
            format!("`{lower}`"),
            format!("{:?}", value.trim()),
        ] {
            out = out.replace(&form, "[REDACTED]");
        }
        if value.trim().len() >= 4 {
            out = out.replace(value.trim(), "[REDACTED]");
        }
    }
    out
}

/// Refuses a file that sets a secret: secrets belong in the environment. Returns the keys
/// the file sets.
fn reject_secrets_in_file(file: &Path) -> Result<Vec<String>, ConfigError> {
    if !file.is_file() {
        return Ok(Vec::new());
    }
    let parsed = config::Config::builder()
        .add_source(config::File::from(file))
        .build()
        .map_err(|e| ConfigError::Load(e.to_string()))?;
    let mut keys = Vec::new();
    collect_keys("", &parsed.cache, &mut keys);
    if let Some(key) = keys.iter().find(|key| is_secret_key(key)) {
        let env = format!("APP__{}", key.replace('.', "__").to_uppercase());
        return Err(ConfigError::SecretInFile {
            key: key.clone(),
            env,
            file: file.display().to_string(),
        });
    }
    Ok(keys)
}

fn collect_keys(prefix: &str, value: &config::Value, out: &mut Vec<String>) {
    if let config::ValueKind::Table(table) = &value.kind {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            collect_keys(&key, v, out);
        }
    } else if !prefix.is_empty() && !matches!(value.kind, config::ValueKind::Nil) {
        out.push(prefix.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    /// The repository's own configuration folder.
    fn config_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config")
    }

    fn load(environment: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env_vars = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load(Sources {
            dir: &config_dir(),
            environment,
            env_vars: Some(env_vars),
        })
    }

    fn message(result: Result<Settings, ConfigError>) -> String {
        match result {
            Ok(_) => panic!("expected the settings to be refused"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_shipped_environment_loads() {
        for environment in ENVIRONMENTS {
            // Production names its token keys; nothing else is needed.
            let keys = [("APP__AUTH__JWKS_FILE", "/etc/shop/jwks.json")];
            let vars: &[(&str, &str)] = if *environment == "production" {
                &keys
            } else {
                &[]
            };
            let settings = load(environment, vars).unwrap_or_else(|e| panic!("{environment}: {e}"));
            assert!(!settings.modules.enabled.is_empty(), "{environment}");
        }
    }

    #[test]
    fn local_defaults_serve_on_8080_with_sqlite() {
        let settings = load("local", &[]).expect("local loads");
        assert_eq!(settings.server.host, "127.0.0.1");
        assert_eq!(settings.server.port, 8080);
        assert_eq!(
            settings.server.admin_port, 0,
            "several local processes never clash"
        );
        assert_eq!(settings.database.backend, Backend::Sqlite);
    }

    #[test]
    fn environment_variables_override_files() {
        let settings = load(
            "local",
            &[
                ("APP__SERVER__PORT", "9191"),
                ("APP__DATABASE__POSTGRES__MAX_CONNECTIONS", "7"),
                ("APP__MODULES__ENABLED", "catalog,checkout"),
                ("APP__DATABASE__POSTGRES__OWNER_PASSWORD", "s3cret"),
            ],
        )
        .expect("loads");
        assert_eq!(settings.server.port, 9191);
        assert_eq!(settings.database.postgres.max_connections, 7);
        assert_eq!(settings.modules.enabled, ["catalog", "checkout"]);
        let password = settings
            .database
            .postgres
            .owner_password
            .as_ref()
            .expect("set");
        assert_eq!(password.expose_secret(), "s3cret");
        assert!(
            !format!("{settings:?}").contains("s3cret"),
            "secrets are redacted in Debug"
        );
    }

    /// A secret is the text it was given: the config crate would read `007` as the number 7,
    /// `TRUE` as `true` and 40 digits as a float.
    #[test]
    fn secrets_are_taken_verbatim_while_other_keys_still_parse() {
        let digits = "0123456789012345678901234567890123456789";
        let settings = load(
            "local",
            &[
                ("APP__DATABASE__POSTGRES__OWNER_PASSWORD", "007"),
                ("APP__DATABASE__POSTGRES__ROLE_PASSWORDS__CATALOG", "TRUE"),
                ("APP__BUS__REDIS__PASSWORD", "1e3"),
                ("APP__AUTH__HS256_SECRET", digits),
                ("APP__MODULES__CHECKOUT__PAYMENT__API_KEY", "0x10"),
                ("APP__SERVER__PORT", "9191"),
                ("APP__DATABASE__MIGRATE_ON_START", "FALSE"),
                ("APP__MODULES__CHECKOUT__WATCHDOG__EVERY_SECS", "7"),
            ],
        )
        .expect("loads");
        let pg = &settings.database.postgres;
        let secret = |s: Option<&SecretString>| s.map(|s| s.expose_secret().to_owned());
        assert_eq!(secret(pg.owner_password.as_ref()).as_deref(), Some("007"));
        assert_eq!(
            secret(pg.role_passwords.get("catalog")).as_deref(),
            Some("TRUE")
        );
        assert_eq!(
            secret(settings.bus.redis.password.as_ref()).as_deref(),
            Some("1e3")
        );
        assert_eq!(
            secret(settings.auth.hs256_secret.as_ref()).as_deref(),
            Some(digits)
        );
        let checkout = settings.modules.section("checkout");
        assert_eq!(checkout["payment"]["api_key"], "0x10");
        assert_eq!(settings.server.port, 9191);
        assert!(!settings.database.migrate_on_start);
        assert_eq!(checkout["watchdog"]["every_secs"], 7);
    }

    /// A misspelt secret variable, or a secret's table set to a single value, is refused
    /// naming the key, never showing the value.
    #[test]
    fn a_misnamed_secret_variable_s_value_is_never_echoed() {
        let value = "hunter2-0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a";
        let cases: &[(&str, &str)] = &[
            ("APP__AUTH__HS256_SECRETT", "hs256_secrett"),
            ("APP__DATABASE__POSTGRES__ROLE_PASSWORDS", "role_passwords"),
            (
                "APP__DATABASE__POSTGRES__OWNER_PASSWORD__X",
                "owner_password",
            ),
            ("APP__AUTH", "auth"),
            ("APP__OPERATOR", "operator"),
            ("APP__BUS__REDIS", "redis"),
        ];
        for (var, key) in cases {
            for value in [value, "12345", "TRUE"] {
                let text = message(load("local", &[(var, value)]));
                assert!(text.contains(key), "{var}: {text:?} should name {key}");
                assert!(
                    !text.contains(value) && !text.contains(&value.to_lowercase()),
                    "{var}: {text:?} shows the value"
                );
            }
        }
    }

    #[test]
    fn redaction_replaces_quoted_and_long_bare_values_only() {
        let values = ["hunter2".to_owned(), "7".to_owned()];
        assert_eq!(
            redact(
                "invalid type: string \"hunter2\" (hunter2), integer `7`, at 17:7",
                &values
            ),
            "invalid type: string [REDACTED] ([REDACTED]), integer [REDACTED], at 17:7"
        );
    }

    /// Each row: the variable, its bad value, and what the message must name.
    #[test]
    fn bad_values_are_refused_naming_the_key() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("APP__SERVER__PORT", "eighty", &["server.port", "integer"]),
            ("APP__SERVER__PORT", "70000", &["server.port"]),
            ("APP__SERVER__ADMIN_PORT", "8080", &["server.admin_port"]),
            (
                "APP__SERVER__MAX_BODY_BYTES",
                "10",
                &["server.max_body_bytes"],
            ),
            (
                "APP__DATABASE__BACKEND",
                "oracle",
                &["database.backend", "sqlite", "postgres"],
            ),
            (
                "APP__DATABASE__POSTGRES__MAX_CONNECTIONS",
                "0",
                &["database.postgres.max_connections"],
            ),
            (
                "APP__DATABASE__POSTGRES__ROLE_PREFIX",
                "Bad-Prefix",
                &["database.postgres.role_prefix"],
            ),
            ("APP__TELEMETRY__LEVEL", "info,[=", &["telemetry.level"]),
            ("APP__BUS__KIND", "kafka", &["bus.kind"]),
            ("APP__BUS__REDIS__URL", "http://x", &["bus.redis.url"]),
            (
                "APP__BUS__REDIS__URL",
                "rediss://redis:6380/0",
                &["bus.redis.url", "rediss://", "not supported"],
            ),
            (
                "APP__BUS__REDIS__USERNAME",
                "shop",
                &["bus.redis.username", "APP__BUS__REDIS__PASSWORD"],
            ),
            (
                "APP__DATABASE__POSTGRES__SSL_MODE",
                "verify_full",
                &["database.postgres.ssl_mode", "verify-full"],
            ),
            (
                "APP__DATABASE__POSTGRES__SSL_ROOT_CERT",
                "/etc/shop/pg-ca/ca.crt",
                &["database.postgres.ssl_root_cert", "verify-full"],
            ),
            ("APP__AUTH__JWKS_URL", "ftp://idp/jwks", &["auth.jwks_url"]),
            ("APP__AUTH__JWKS_URL", "https://", &["auth.jwks_url"]),
            (
                "APP__AUTH__JWKS_URL",
                "https://user:pw@idp.example.com/jwks.json",
                &["auth.jwks_url", "without credentials"],
            ),
            (
                "APP__AUTH__JWKS_CA_FILE",
                "/etc/shop/idp-ca.pem",
                &["auth.jwks_ca_file", "https:// auth.jwks_url"],
            ),
            (
                "APP__TELEMETRY__OTLP_ENDPOINT",
                "grpc://collector:4317",
                &["telemetry.otlp_endpoint", "https://"],
            ),
            (
                "APP__TELEMETRY__OTLP_CA_FILE",
                "/etc/shop/collector-ca.pem",
                &["telemetry.otlp_ca_file", "https:// telemetry.otlp_endpoint"],
            ),
            ("APP__MODULES__ENABLED", "Catalog", &["modules.enabled[0]"]),
            ("APP__SERVER__NO_SUCH_KEY", "1", &["no_such_key"]),
        ];
        for (key, value, expected) in cases {
            let text = message(load("local", &[(key, value)]));
            for needle in *expected {
                assert!(
                    text.contains(needle),
                    "{key}={value}: {text:?} should mention {needle:?}"
                );
            }
        }
    }

    /// An `http://` key set URL lets anyone on the path swap the keys every token is checked
    /// with: production takes one only when a named setting says the network is trusted.
    #[test]
    fn production_takes_an_http_jwks_url_only_when_told_the_network_is_trusted() {
        let http = ("APP__AUTH__JWKS_URL", "http://idp.internal/jwks.json");
        let https = ("APP__AUTH__JWKS_URL", "https://idp.example.com/jwks.json");
        let trusted = ("APP__AUTH__JWKS_ALLOW_HTTP", "true");
        let ca = ("APP__AUTH__JWKS_CA_FILE", "/etc/shop/idp-ca.pem");
        for environment in ["local", "test"] {
            load(environment, &[http]).unwrap_or_else(|e| panic!("{environment}: {e}"));
        }
        let refused = message(load("production", &[http]));
        for needle in ["auth.jwks_url", "https://", "APP__AUTH__JWKS_ALLOW_HTTP"] {
            assert!(refused.contains(needle), "{refused:?} should name {needle}");
        }
        for accepted in [&[http, trusted][..], &[https], &[https, ca]] {
            let settings = load("production", accepted)
                .unwrap_or_else(|e| panic!("{accepted:?} is refused: {e}"));
            assert!(settings.auth.jwks_url.is_some());
        }
    }

    #[test]
    fn an_https_trace_collector_is_accepted_with_its_ca() {
        let settings = load(
            "local",
            &[
                (
                    "APP__TELEMETRY__OTLP_ENDPOINT",
                    "https://collector.internal:4318/v1/traces",
                ),
                ("APP__TELEMETRY__OTLP_CA_FILE", "/etc/shop/collector-ca.pem"),
            ],
        )
        .expect("loads");
        assert_eq!(
            settings.telemetry.otlp_ca_file.as_deref(),
            Some(Path::new("/etc/shop/collector-ca.pem"))
        );
    }

    #[test]
    fn production_serves_metrics_on_its_own_port() {
        let settings = load(
            "production",
            &[("APP__AUTH__JWKS_FILE", "/etc/shop/jwks.json")],
        )
        .expect("production loads");
        assert_eq!(settings.server.admin_port, 9090);
        assert_ne!(settings.server.admin_port, settings.server.port);
    }

    #[test]
    fn an_unknown_environment_is_refused() {
        let text = message(load("staging", &[]));
        assert!(
            text.contains("staging") && text.contains("APP_ENVIRONMENT"),
            "{text}"
        );
    }

    #[test]
    fn a_secret_in_a_file_is_refused() {
        let dir = tempfile_dir();
        std::fs::copy(config_dir().join("base.toml"), dir.join("base.toml")).expect("copy base");
        std::fs::write(
            dir.join("local.toml"),
            "[database.postgres]\nowner_password = \"hunter2\"\n",
        )
        .expect("write local");
        let result = Settings::load(Sources {
            dir: &dir,
            environment: "local",
            env_vars: Some(HashMap::new()),
        });
        let text = message(result);
        assert!(
            text.contains("database.postgres.owner_password")
                && text.contains("APP__DATABASE__POSTGRES__OWNER_PASSWORD"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_missing_folder_says_how_to_point_at_one() {
        let result = Settings::load(Sources {
            dir: Path::new("/nonexistent/config"),
            environment: "local",
            env_vars: Some(HashMap::new()),
        });
        assert!(message(result).contains("APP_CONFIG_DIR"));
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("config-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// Every key of `config/base.toml` (which must hold every key of these settings: none
    /// has a default), and every secret, has a row in the README's configuration
    /// reference, with its environment variable.
    #[test]
    fn the_readme_documents_every_key_with_its_environment_variable() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
        let base = std::fs::read_to_string(root.join("config/base.toml")).expect("base.toml");
        let mut section = String::new();
        let mut keys = Vec::new();
        for line in base.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
            } else if let Some((key, _)) = line.split_once('=')
                && !line.starts_with('#')
            {
                keys.push(format!("{section}.{}", key.trim()));
            }
        }
        assert!(keys.len() > 30, "base.toml read: {keys:?}");
        keys.extend(
            [
                "database.postgres.owner_password",
                "database.postgres.role_passwords.<module>",
                "bus.redis.password",
                "operator.token",
            ]
            .map(str::to_owned),
        );
        for key in keys {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{key}` |")))
                .unwrap_or_else(|| panic!("README.md has no configuration row for {key}"));
            let variable = format!(
                "APP__{}",
                key.replace("<module>", "<MODULE>")
                    .replace('.', "__")
                    .to_uppercase()
            );
            assert!(
                row.contains(&variable),
                "{key}: the row names no {variable}"
            );
        }
    }
}
