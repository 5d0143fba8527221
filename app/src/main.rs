//! The monolith binary. `app` serves; `app migrate`, `app check-config` and
//! `app healthcheck` are described in the README.

fn main() -> std::process::ExitCode {
    runtime::cli::main("shop", "config", app::modules)
}
