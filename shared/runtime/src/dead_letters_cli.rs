//! `dead-letters list|show|replay|discard --module <m>`: a module's dead letters, read and
//! changed directly in its store, for operators who have the database settings but not
//! the HTTP operator token. Every binary has it (the monolith and each extracted service
//! share the command line), so it works the same before and after an extraction.
//!
//! A replay only marks the letter `replay_requested`; the module's running consumer picks
//! it up within a second or so (it polls for requests). The status guards of the store
//! apply: of a replay and a discard of one letter, exactly one wins. Every replay and
//! discard is logged with who asked (`--by`, default `$USER`) and why (`--reason`).

use anyhow::{Context, bail};
use clap::Subcommand;
use messaging::dead_letters::{self, Change};

use module_api::Module;

use crate::config::Settings;
use crate::db;

#[derive(Subcommand)]
pub(crate) enum Action {
    /// The module's dead letters in id order (without their raw bytes).
    List {
        #[arg(long)]
        module: String,
        /// Only this status: dead, replay_requested, replayed, discarded.
        #[arg(long)]
        status: Option<String>,
        /// Only ids above this one (the previous page's last id).
        #[arg(long)]
        after: Option<i64>,
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// One dead letter in full, as JSON, with the event as delivered.
    Show {
        #[arg(long)]
        module: String,
        id: i64,
    },
    /// Asks the module to run a dead letter again.
    Replay {
        #[arg(long)]
        module: String,
        id: i64,
        #[command(flatten)]
        why: Why,
    },
    /// Gives up on a dead letter for good.
    Discard {
        #[arg(long)]
        module: String,
        id: i64,
        #[command(flatten)]
        why: Why,
    },
}

/// Who changes a letter, and why: both go to the log.
#[derive(clap::Args)]
pub(crate) struct Why {
    /// Why (logged).
    #[arg(long)]
    reason: String,
    /// Who (logged); the login name by default.
    #[arg(long, env = "USER")]
    by: String,
}

const STATUSES: [&str; 4] = ["dead", "replay_requested", "replayed", "discarded"];

pub(crate) async fn run(
    action: Action,
    settings: &Settings,
    available: &[std::sync::Arc<dyn Module>],
) -> anyhow::Result<()> {
    let module_of = |name: &str| -> anyhow::Result<&'static str> {
        match available.iter().find(|m| m.name() == name) {
            Some(m) => Ok(m.name()),
            None => bail!(
                "--module: no module {name:?} in this binary; expected one of {}",
                available
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    };
    let connect = |module: &'static str| async move {
        db::connect_module(&settings.database, module)
            .await
            .with_context(|| format!("failed to open {module}'s store"))
    };
    match action {
        Action::List {
            module,
            status,
            after,
            limit,
        } => {
            let module = module_of(&module)?;
            if let Some(s) = &status
                && !STATUSES.contains(&s.as_str())
            {
                bail!("--status: {s:?} is not one of {}", STATUSES.join(", "));
            }
            let store = connect(module).await?;
            let letters = dead_letters::list(&store, status.as_deref(), after, limit).await?;
            let mut out =
                String::from("id\tstatus\tattempts\tevent_type\tlast_failed_at\tlast_error\n");
            for l in &letters {
                let error: String = l.last_error.chars().take(100).collect();
                out.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\n",
                    l.id,
                    l.status,
                    l.attempts,
                    l.event_type.as_deref().unwrap_or("-"),
                    l.last_failed_at,
                    error.replace(['\n', '\t'], " ")
                ));
            }
            print(&out);
        }
        Action::Show { module, id } => {
            let store = connect(module_of(&module)?).await?;
            match dead_letters::get(&store, id).await? {
                Some(letter) => print(&format!("{}\n", serde_json::to_string_pretty(&letter)?)),
                None => bail!("no dead letter {id} in {module}"),
            }
        }
        Action::Replay { module, id, why } => {
            let module = module_of(&module)?;
            let store = connect(module).await?;
            let change = dead_letters::request_replay(&store, id).await?;
            settle(&store, module, id, change, "replay", &why).await?;
            print(&format!(
                "dead letter {id} of {module}: replay requested; the running {module} consumer will run it\n"
            ));
        }
        Action::Discard { module, id, why } => {
            let module = module_of(&module)?;
            let store = connect(module).await?;
            let change = dead_letters::discard(&store, id).await?;
            settle(&store, module, id, change, "discard", &why).await?;
            print(&format!("dead letter {id} of {module}: discarded\n"));
        }
    }
    Ok(())
}

async fn settle(
    store: &store::ModuleDb,
    module: &'static str,
    id: i64,
    change: Change,
    what: &'static str,
    why: &Why,
) -> anyhow::Result<()> {
    match change {
        Change::Done => {
            tracing::warn!(
                module,
                dead_letter_id = id,
                by = %why.by,
                reason = %why.reason,
                via = "command line",
                "dead letter {what} by an operator"
            );
            Ok(())
        }
        Change::NotFound => bail!("no dead letter {id} in {module}"),
        Change::WrongStatus => {
            let status = dead_letters::get(store, id)
                .await?
                .map(|l| l.status)
                .unwrap_or_default();
            bail!("dead letter {id} of {module} is {status}: it cannot be changed by a {what}")
        }
    }
}

/// The command's answer, on stdout (logs are JSON lines on stdout too; they are on other
/// lines).
fn print(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
