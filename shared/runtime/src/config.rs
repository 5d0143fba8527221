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

use crate::validation::flatten_validation_errors;

/// Keys that hold secrets: they may come from the environment only, never from a file.
/// A prefix ending in `.` covers every key below it.
pub const SECRET_KEYS: &[&str] = &[
    "database.postgres.owner_password",
    "database.postgres.role_passwords.",
    "bus.redis.password",
    "operator.token",
    "auth.hs256_secret",
];

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
}

word_enum!(SslMode {
    Disable = "disable",
    Prefer = "prefer",
    Require = "require",
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
    #[validate(range(min = 0, max = 3600000))]
    pub statement_timeout_ms: u64,
    pub ssl_mode: SslMode,
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// A tracing filter such as `info` or `info,sqlx=warn`; `RUST_LOG` overrides it.
    #[validate(custom(function = "crate::validation::log_filter"))]
    pub level: String,
    /// Where spans are exported over OTLP (HTTP/protobuf), the full URL such as
    /// `http://collector:4318/v1/traces`; empty: nothing is exported.
    #[validate(custom(function = "crate::validation::otlp_endpoint"))]
    pub otlp_endpoint: String,
}

word_enum!(BusKind {
    /// Events travel between modules of this process through each consumer's inbox queue.
    Local = "local",
    /// Events travel over Redis Streams (a module runs in another process).
    Redis = "redis",
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
    /// Required in production.
    pub jwks_file: Option<PathBuf>,
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
    #[error("{0}")]
    Load(#[from] config::ConfigError),
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

        for file in [&base, &env_file] {
            reject_secrets_in_file(file)?;
        }

        let env = config::Environment::with_prefix("APP")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("modules.enabled")
            .source(sources.env_vars);
        let raw = config::Config::builder()
            .add_source(config::File::from(base.as_path()))
            .add_source(config::File::from(env_file.as_path()).required(false))
            .add_source(env)
            .build()?;
        let mut settings: Settings = raw.try_deserialize()?;
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
        if self.environment == "production" {
            if auth.jwks_file.is_none() {
                errors.add(
                    "auth.jwks_file",
                    "required",
                    "production verifies tokens with the identity provider's public keys: \
                     set APP__AUTH__JWKS_FILE to a JWK set file",
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

/// Refuses a file that sets a secret: secrets belong in the environment.
fn reject_secrets_in_file(file: &Path) -> Result<(), ConfigError> {
    if !file.is_file() {
        return Ok(());
    }
    let parsed = config::Config::builder()
        .add_source(config::File::from(file))
        .build()?;
    let mut keys = Vec::new();
    collect_keys("", &parsed.cache, &mut keys);
    for key in keys {
        let secret = SECRET_KEYS.iter().any(|s| {
            if s.ends_with('.') {
                key.starts_with(s)
            } else {
                key == *s
            }
        });
        if secret {
            let env = format!("APP__{}", key.replace('.', "__").to_uppercase());
            return Err(ConfigError::SecretInFile {
                key,
                env,
                file: file.display().to_string(),
            });
        }
    }
    Ok(())
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
