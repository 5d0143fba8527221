//! A module role's password on a PostgreSQL server of the test's own, which asks every role
//! but the owner for its password (SCRAM-SHA-256) and logs every statement: setting the
//! password sends a verifier, so the log never holds the plaintext, and the role still
//! logs in with the plaintext (and not with another password).

use std::path::{Path, PathBuf};
use std::process::Command;

use sea_orm::ConnectionTrait;
use secrecy::SecretString;

/// A PostgreSQL cluster in a folder of its own on a free loopback port; stopped and
/// removed when dropped. PostgreSQL refuses to run as root, so as root its programs run as
/// the `postgres` user.
struct PrivatePostgres {
    root: PathBuf,
    port: u16,
}

fn pg_bin() -> PathBuf {
    let mut majors: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server programs in /usr/lib/postgresql")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    majors.sort();
    let major = majors.last().expect("a PostgreSQL major version");
    PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn run(program: &str, args: &[&str]) {
    let mut command = if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            "postgres",
            "--regid",
            "postgres",
            "--clear-groups",
            "--",
        ]);
        c.arg(pg_bin().join(program));
        c
    } else {
        Command::new(pg_bin().join(program))
    };
    let output = command.args(args).output().expect("the program runs");
    assert!(
        output.status.success(),
        "{program}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl PrivatePostgres {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let root = std::env::temp_dir().join(format!("pg-passwords-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&root).expect("a folder");
        if is_root() {
            let id = |flag: &str| -> u32 {
                let out = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .expect("id");
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .expect("the postgres user exists")
            };
            std::os::unix::fs::chown(&root, Some(id("-u")), Some(id("-g"))).expect("chown");
        }
        let server = Self { root, port };
        let data = server.path("data");
        run(
            "initdb",
            &["-A", "trust", "-U", "postgres", "--no-sync", "-D", &data],
        );
        // The owner logs in without a password; every other role must give its own.
        std::fs::write(
            Path::new(&data).join("pg_hba.conf"),
            "local all all trust\n\
             host all postgres 127.0.0.1/32 trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("pg_hba.conf");
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c log_statement=all",
            server.root.display()
        );
        run(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                &data,
                "-l",
                &server.path("server.log"),
                "-o",
                &options,
            ],
        );
        server
    }

    fn path(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("server.log")).expect("the server's log")
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        run(
            "pg_ctl",
            &["stop", "-w", "-m", "immediate", "-D", &self.path("data")],
        );
        std::fs::remove_dir_all(&self.root).ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_role_s_password_never_reaches_the_server_log_and_still_logs_in() {
    let server = PrivatePostgres::start();
    let plaintext = "Plain-text-5f1c0e9b7a3d42c8'a6e1";
    let mut settings = testkit::test_settings();
    settings.database.backend = runtime::config::Backend::Postgres;
    let pg = &mut settings.database.postgres;
    pg.host = "127.0.0.1".into();
    pg.port = server.port;
    pg.database = "postgres".into();
    pg.owner_user = "postgres".into();
    pg.provision_roles = true;
    pg.role_passwords
        .insert("catalog".into(), SecretString::from(plaintext));
    runtime::db::prepare_module(&settings.database, "catalog", async |_| Ok(()))
        .await
        .expect("the owner creates the role and sets its password");

    let module = runtime::db::connect_module(&settings.database, "catalog")
        .await
        .expect("the role logs in with its plaintext password");
    module
        .conn()
        .execute_unprepared("SELECT 1")
        .await
        .expect("and queries");
    module.close().await.ok();

    let mut wrong = settings.database.clone();
    wrong
        .postgres
        .role_passwords
        .insert("catalog".into(), SecretString::from("another-password"));
    let refused = match runtime::db::connect_module(&wrong, "catalog").await {
        Ok(db) => db.conn().execute_unprepared("SELECT 1").await.err(),
        Err(e) => Some(sea_orm::DbErr::Custom(format!("{e:#}"))),
    };
    let refused = refused.expect("another password is refused");
    assert!(
        refused
            .to_string()
            .contains("password authentication failed"),
        "{refused}"
    );

    let log = server.log();
    assert!(
        !log.contains("Plain-text") && !log.contains("5f1c0e9b7a3d42c8"),
        "the plaintext reached the server's log: {log}"
    );
    assert!(
        log.contains("ALTER ROLE \"shop_catalog\" PASSWORD 'SCRAM-SHA-256$4096:"),
        "every statement is logged, the password's too: {log}"
    );
}
