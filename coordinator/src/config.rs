//! Command-line configuration.
use clap::{Args, Parser, Subcommand};

use crate::smtp::Mailer;

#[derive(Parser, Debug)]
#[command(
    name = "herald",
    version,
    about = "Herald coordinator: drains Herald event queues"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a coordinator (sidecar) until SIGTERM or Ctrl-C.
    Run(RunArgs),
    /// Print queues, backlogs and which node drains what.
    Status(DbArgs),
    /// Start a private PostgreSQL cluster, three coordinators and a workload, then report.
    Demo(DemoArgs),
}

#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    /// PostgreSQL connection string (key=value or postgres:// URL).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Node name shown in monitoring; defaults to the host name.
    #[arg(long, env = "HERALD_NODE")]
    pub node: Option<String>,
    /// Jobs this coordinator runs at once. `sql` jobs each use a runner connection while
    /// they run (at most half of what --max-connections leaves); `command` jobs share one.
    #[arg(long, env = "HERALD_JOB_RUNNERS", default_value_t = 4)]
    pub job_runners: usize,
    /// The most connections this coordinator opens, however many queues it drains and jobs
    /// it runs (at least 6: control, job manager, job claims, output, one runner, one
    /// queue lane).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 16)]
    pub max_connections: usize,
    /// The mail server for jobs' outcome mails (`notify_email`): smtp://host[:port]
    /// (add ?tls=required for STARTTLS) or smtps://host[:port], credentials as user:pass@.
    /// Without it this coordinator sends no mails (others may).
    #[arg(long, env = "HERALD_SMTP_URL")]
    pub smtp_url: Option<String>,
    /// The sender of outcome mails and report mails.
    #[arg(
        long,
        env = "HERALD_MAIL_FROM",
        default_value = "Herald <herald@localhost>"
    )]
    pub mail_from: String,
    /// The directory file channels write report output into (each channel's target is a
    /// directory under it). Without it this coordinator writes no report files (others
    /// may); all coordinators of a cluster should see the same directory.
    #[arg(long, env = "HERALD_SPOOL_DIR")]
    pub spool_dir: Option<std::path::PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Events to emit in the demo workload.
    #[arg(long, default_value_t = 2000)]
    pub events: u32,
    /// Number of coordinators to start.
    #[arg(long, default_value_t = 3)]
    pub coordinators: u32,
}

/// A configuration mistake: reported in one readable line, exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no database given: set DATABASE_URL or pass --database-url")]
    NoDatabase,
    #[error("invalid database URL: {0}")]
    BadUrl(String),
    #[error("invalid node name {0:?}: use letters, digits, '-', '_' or '.' (at most 48)")]
    BadNode(String),
    #[error("--job-runners must be between 1 and 1000, not {0}")]
    BadJobRunners(usize),
    #[error("--max-connections must be between {min} and 1000, not {0}", min = Budget::MIN)]
    BadMaxConnections(usize),
    #[error("{0}")]
    BadMail(String),
}

/// How a coordinator spends its connections (`--max-connections`): four fixed ones (the
/// control connection, the job manager's, the one holding the claims of `command` jobs,
/// and the output worker's), runner connections for `sql` and `report` jobs, and queue
/// lanes, each draining many queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Connections that run `sql` jobs (each runs one at a time).
    pub sql_runners: usize,
    /// Connections that drain queues; lookups of different lanes run concurrently.
    pub lanes: usize,
}

impl Budget {
    const FIXED: usize = 4;
    pub const MIN: usize = Budget::FIXED + 2;

    /// Split `max` connections: `sql` runners get up to half of what the fixed ones leave
    /// (no more than `job_runners`), the queue lanes the rest.
    pub fn new(max: usize, job_runners: usize) -> Result<Budget, ConfigError> {
        if !(Budget::MIN..=1000).contains(&max) {
            return Err(ConfigError::BadMaxConnections(max));
        }
        let rest = max - Budget::FIXED;
        let sql_runners = job_runners.min(rest / 2).max(1);
        Ok(Budget {
            sql_runners,
            lanes: rest - sql_runners,
        })
    }

    /// Every connection the coordinator may open.
    pub fn total(&self) -> usize {
        Budget::FIXED + self.sql_runners + self.lanes
    }
}

/// Validated settings of `herald run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub database: tokio_postgres::Config,
    pub node: String,
    pub job_runners: usize,
    pub budget: Budget,
    /// Where outcome mails go, if this coordinator sends them.
    pub mailer: Option<Mailer>,
    /// Where file channels write, if this coordinator writes report files.
    pub spool_dir: Option<std::path::PathBuf>,
}

impl RunConfig {
    pub fn from_args(args: &RunArgs) -> Result<Self, ConfigError> {
        let database = parse_database(&args.db)?;
        let node = match &args.node {
            Some(n) => n.clone(),
            None => default_node(),
        };
        let valid = !node.is_empty()
            && node.len() <= 48
            && node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid {
            return Err(ConfigError::BadNode(node));
        }
        if !(1..=1000).contains(&args.job_runners) {
            return Err(ConfigError::BadJobRunners(args.job_runners));
        }
        let budget = Budget::new(args.max_connections, args.job_runners)?;
        let mailer = match args.smtp_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(url) => Some(Mailer::new(url, &args.mail_from).map_err(ConfigError::BadMail)?),
        };
        Ok(RunConfig {
            database,
            node,
            job_runners: args.job_runners,
            budget,
            mailer,
            spool_dir: args.spool_dir.clone(),
        })
    }
}

pub fn parse_database(args: &DbArgs) -> Result<tokio_postgres::Config, ConfigError> {
    let url = args
        .database_url
        .as_deref()
        .ok_or(ConfigError::NoDatabase)?;
    if url.trim().is_empty() {
        return Err(ConfigError::NoDatabase);
    }
    url.parse::<tokio_postgres::Config>()
        .map_err(|e| ConfigError::BadUrl(e.to_string()))
}

fn default_node() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let clean: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .take(48)
        .collect();
    if clean.is_empty() {
        "herald".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(url: Option<&str>, node: Option<&str>) -> RunArgs {
        RunArgs {
            db: DbArgs {
                database_url: url.map(str::to_string),
            },
            node: node.map(str::to_string),
            job_runners: 4,
            max_connections: 16,
            smtp_url: None,
            mail_from: "Herald <herald@localhost>".into(),
            spool_dir: None,
        }
    }

    #[test]
    fn the_connection_budget_splits_and_is_checked() {
        let b = Budget::new(16, 4).unwrap();
        assert_eq!((b.sql_runners, b.lanes, b.total()), (4, 8, 16));
        // Runners never take more than half of what is left; lanes always get one.
        let b = Budget::new(6, 100).unwrap();
        assert_eq!((b.sql_runners, b.lanes, b.total()), (1, 1, 6));
        let b = Budget::new(40, 100).unwrap();
        assert_eq!((b.sql_runners, b.lanes), (18, 18));
        assert!(matches!(
            Budget::new(5, 4),
            Err(ConfigError::BadMaxConnections(5))
        ));
        let mut args = run_args(Some("host=x"), Some("a"));
        args.max_connections = 2;
        let e = RunConfig::from_args(&args).unwrap_err();
        assert!(
            e.to_string()
                .contains("--max-connections must be between 6"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_database_is_a_configuration_error() {
        assert!(matches!(
            RunConfig::from_args(&run_args(None, Some("a"))),
            Err(ConfigError::NoDatabase)
        ));
        assert!(matches!(
            RunConfig::from_args(&run_args(Some("  "), Some("a"))),
            Err(ConfigError::NoDatabase)
        ));
    }

    #[test]
    fn urls_in_both_styles_are_accepted_and_bad_ones_refused() {
        assert!(RunConfig::from_args(&run_args(
            Some("postgres://u@localhost:5432/erp"),
            Some("a")
        ))
        .is_ok());
        assert!(RunConfig::from_args(&run_args(Some("host=/tmp dbname=erp"), Some("a"))).is_ok());
        let bad = RunConfig::from_args(&run_args(
            Some("postgres://u@localhost:notaport/erp"),
            Some("a"),
        ));
        assert!(matches!(bad, Err(ConfigError::BadUrl(_))));
    }

    #[test]
    fn node_names_are_checked_and_default_to_the_host_name() {
        assert!(matches!(
            RunConfig::from_args(&run_args(Some("host=x"), Some("bad node"))),
            Err(ConfigError::BadNode(_))
        ));
        assert!(matches!(
            RunConfig::from_args(&run_args(Some("host=x"), Some(""))),
            Err(ConfigError::BadNode(_))
        ));
        let long = "n".repeat(49);
        assert!(matches!(
            RunConfig::from_args(&run_args(Some("host=x"), Some(&long))),
            Err(ConfigError::BadNode(_))
        ));
        let config = RunConfig::from_args(&run_args(Some("host=x"), None)).unwrap();
        assert!(!config.node.is_empty());
    }
}
