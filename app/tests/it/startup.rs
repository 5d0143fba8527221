//! With `database.migrate_on_start` off, the app starts only on schemas a `migrate` brought
//! up to date, and says which module is behind otherwise.

use runtime::host::{Application, Hooks};
use testkit::{Backend, TestApp, TestDatabase, on_both_backends, test_settings};

on_both_backends!(with_migrations_off_the_app_starts_only_on_up_to_date_schemas);

async fn with_migrations_off_the_app_starts_only_on_up_to_date_schemas(backend: Backend) {
    let mut settings = test_settings();
    settings.modules.enabled = vec!["catalog".into(), "checkout".into(), "fulfillment".into()];
    settings.bus.instance = format!("test-{}", uuid::Uuid::new_v4().simple());
    settings.server.port = 0;
    let db = TestDatabase::create(backend, &mut settings).await;
    settings.database.migrate_on_start = false;
    let modules = app::modules();

    let refused = match Application::build_with(settings.clone(), &modules, Hooks::default()).await
    {
        Ok(_) => panic!("the app started on an empty database"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        refused.contains("schema is not up to date") && refused.contains("run `migrate`"),
        "{refused}"
    );

    runtime::host::migrate(
        &settings,
        &runtime::host::select_modules(&settings, &modules).expect("modules"),
    )
    .await
    .expect("migrate");
    let app = TestApp::start_on(settings, modules, Hooks::default(), db)
        .await
        .expect("the app starts once the schemas are up to date");
    app.get("/readyz").await.expect_status(200);
    app.stop().await;
}

/// Two migrators of one schema at once on PostgreSQL (replicas starting together): the
/// second waits on the schema's advisory lock while the first migrates, then finds the
/// work done. Both succeed, never both inside at once, and every migration is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_migrators_of_one_schema_at_once_take_turns_and_both_succeed() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    use module_api::Module;
    use sea_orm::ConnectionTrait;

    let mut settings = test_settings();
    settings.modules.enabled = vec!["catalog".into()];
    let _db = TestDatabase::create(Backend::Postgres, &mut settings).await;
    let inside = Arc::new(AtomicUsize::new(0));
    let most_inside = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let migrator = || {
        let (inside, most_inside, entered) = (inside.clone(), most_inside.clone(), entered.clone());
        let database = settings.database.clone();
        async move {
            runtime::db::prepare_module(&database, "catalog", async move |conn| {
                let now = inside.fetch_add(1, SeqCst) + 1;
                most_inside.fetch_max(now, SeqCst);
                if entered.fetch_add(1, SeqCst) == 0 {
                    // The first in waits until the other one is seen queued on the lock
                    // (or, were there no lock, inside too), so the two really overlap.
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                    loop {
                        let waiting = conn
                            .query_one_raw(sea_orm::Statement::from_string(
                                conn.get_database_backend(),
                                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' \
                                 AND NOT granted AND database = \
                                 (SELECT oid FROM pg_database WHERE datname = current_database())"
                                    .to_owned(),
                            ))
                            .await?
                            .map(|r| r.try_get_by_index::<i64>(0))
                            .transpose()?
                            .unwrap_or(0);
                        if waiting > 0 || inside.load(SeqCst) > 1 {
                            break;
                        }
                        assert!(
                            std::time::Instant::now() < deadline,
                            "the second migrator never reached the lock"
                        );
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                }
                let migrated = catalog::Catalog.migrate(conn).await;
                inside.fetch_sub(1, SeqCst);
                migrated
            })
            .await
        }
    };
    let (first, second) = tokio::join!(tokio::spawn(migrator()), tokio::spawn(migrator()));
    first.expect("runs").expect("the first migrator succeeds");
    second.expect("runs").expect("the second migrator succeeds");
    assert_eq!(entered.load(SeqCst), 2, "both ran their migrations");
    assert_eq!(most_inside.load(SeqCst), 1, "never both at once");

    let db = runtime::db::connect_module(&settings.database, "catalog")
        .await
        .expect("connect as catalog");
    let recorded = db
        .conn()
        .query_one_raw(sea_orm::Statement::from_string(
            db.backend(),
            "SELECT COUNT(*) FROM seaql_migrations".to_owned(),
        ))
        .await
        .expect("read the applied migrations")
        .expect("a row")
        .try_get_by_index::<i64>(0)
        .expect("a count");
    db.close().await.ok();
    assert_eq!(
        recorded,
        catalog::Catalog.migrations().len() as i64,
        "every migration recorded, once"
    );
}
