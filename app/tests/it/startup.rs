//! With `database.migrate_on_start` off, the app starts only on schemas a `migrate` brought
//! up to date, and says which module is behind otherwise.

use runtime::{Application, Hooks};
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
