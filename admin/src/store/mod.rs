//! The store: every table of DESIGN.md §3 behind one type, on PostgreSQL or SQLite.
//!
//! Both backends run the same SQL text (sqlx binds `$1` on SQLite too); where the
//! dialects differ the SQL is chosen per backend next to its twin. [`on_pool!`]
//! expands a body once per backend so each is compiled against its own driver —
//! no `Any` driver, no lost types. Migrations are embedded in the binary and run
//! at start-up.

mod access_logs;
mod accounts;
mod catalog;
mod customers;
mod encryption;
mod idempotency;
mod leases;
mod node_ca;
mod nodes;
mod operations;
mod playback;
mod pools;
mod probes;
mod routes;
mod rows;
mod stamps;
mod targets;
mod upgrades;
mod usage;
mod warm;

use std::borrow::Cow;
use std::str::FromStr;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

pub use access_logs::{AccessLogRow, AccessLogsRecorded};
pub use accounts::{AccountChange, NewAccount};
pub use catalog::{BUILTIN_TYPES, JIT_TYPE, OriginTypeSettings};
pub use customers::{AccountLimits, QuotaOverrides, QuotaUse};
pub use idempotency::{IDEMPOTENCY_TTL_MS, IdempotencyStart};
pub use node_ca::{IssuedTo, NodeCaRow};
pub use nodes::{HeartbeatRecord, NodeConfigState, NodeHealthRow, NodeServing, Placement, ServedAccountRow};
pub use operations::{Effect, OperationFilter, OperationQuery};
pub use pools::PoolSpec;
pub use probes::FleetGauges;
pub use routes::RouteRow;
pub use rows::*;
pub use stamps::NodeAtStamp;
pub use targets::{
    HeardNode, KubernetesSettings, NewTarget, NodeSettings, TaintEffect, TargetChange, TargetRow, TargetSettings,
    TargetUse, Toleration, TolerationOperator,
};
pub use upgrades::{HALT_AFTER_FAILED_NODES, UpgradeProgress, UpgradeStep};
pub use usage::{Stored, UsageRecorded, UsageRow, UsageWindowRow, window_bytes_limit};
pub use warm::WarmPool;

/// Expands `$body` once per backend with `$p` bound to that backend's pool.
macro_rules! on_pool {
    ($store:expr, |$p:ident| $body:expr) => {
        match &$store.backend {
            $crate::store::Backend::Postgres($p) => $body,
            $crate::store::Backend::Sqlite($p) => $body,
        }
    };
}
pub(crate) use on_pool;

/// The columns of an [`OriginTypeRow`], for every query that returns one.
macro_rules! origin_type_columns {
    () => {
        "name, node_capacity_mbps, sla_increment_mbps, trial_cap_mbps, payg_cap_mbps, current_image, \
         created_at, updated_at, warm_pools, retention_hours, completed_image, max_sla_mbps"
    };
}
pub(crate) use origin_type_columns;

/// Begins a transaction that will write. On SQLite it takes the write lock at once
/// (`BEGIN IMMEDIATE`): a deferred transaction that reads, then writes, would fail
/// with "database is locked" instead of waiting when another writer is active.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>;
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.begin().await
    }
}

/// How each backend locks a row it reads for a change: PostgreSQL locks it (`FOR
/// UPDATE`); SQLite's write transaction already holds the one write lock.
pub(crate) trait LockCustomer {
    /// Reads a customer's row and locks it until the transaction ends.
    const LOCK_CUSTOMER: &'static str;
}

impl LockCustomer for PgPool {
    const LOCK_CUSTOMER: &'static str = "SELECT id FROM customers WHERE id = $1 FOR UPDATE";
}

impl LockCustomer for SqlitePool {
    const LOCK_CUSTOMER: &'static str = "SELECT id FROM customers WHERE id = $1";
}

/// The `LOCK_CUSTOMER` statement of the pool `p` is of.
pub(crate) fn lock_customer_sql<P: LockCustomer>(_: &P) -> &'static str {
    P::LOCK_CUSTOMER
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

/// Writes one row of the audit trail inside the caller's transaction.
macro_rules! event {
    ($tx:expr, $at:expr, $actor:expr, $action:expr, $subject:expr, $reason:expr) => {
        sqlx::query("INSERT INTO events (at, actor, action, subject, reason) VALUES ($1, $2, $3, $4, $5)")
            .bind($at)
            .bind($actor)
            .bind($action)
            .bind($subject)
            .bind($reason)
            .execute(&mut *$tx)
            .await
    };
}
pub(crate) use event;

#[derive(Debug, Clone)]
pub(crate) enum Backend {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// The admin's durable state. Cheap to clone (pools are shared handles).
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) backend: Backend,
}

/// What went wrong in the store, sorted so callers can answer without string matching.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique rule of the schema refused the write; `field` names what collided.
    #[error("{field} is already taken")]
    Conflict { field: &'static str },
    /// A check, trigger or foreign key of the schema refused the write.
    #[error("the store refused the value: {0}")]
    Constraint(String),
    #[error("not found")]
    NotFound,
    /// The row is not in a state that allows the change.
    #[error("{0}")]
    InvalidState(String),
    /// The change would pass one of the customer's quotas (`quota` names it).
    #[error("{detail}")]
    Quota { quota: &'static str, detail: String },
    #[error("unsupported database url '{0}': use postgres://… or sqlite://…")]
    Url(String),
    #[error("database: {0}")]
    Db(#[source] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::RowNotFound = e {
            return StoreError::NotFound;
        }
        if let Some(db) = e.as_database_error() {
            let what = format!("{} {}", db.constraint().unwrap_or_default(), db.message());
            if db.is_unique_violation() {
                return StoreError::Conflict { field: conflict_field(&what) };
            }
            if db.is_check_violation() || db.is_foreign_key_violation() || what.contains("CHECK constraint failed") {
                return StoreError::Constraint(db.message().to_owned());
            }
        }
        StoreError::Db(e)
    }
}

/// Names the field behind a unique violation from the constraint (PostgreSQL) or
/// the message (SQLite lists the columns).
fn conflict_field(what: &str) -> &'static str {
    if what.contains("email") {
        "email"
    } else if what.contains("one_per_type") || what.contains("accounts.customer_id, accounts.origin_type") {
        "origin_type"
    } else if what.contains("custom_domain") {
        "custom_domain"
    } else if what.contains("images") {
        "version"
    } else {
        "name"
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

const PG_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "foundation", include_str!("../../../migrations/postgres/0001_foundation.sql")),
    (2, "nodes and usage", include_str!("../../../migrations/postgres/0002_nodes_and_usage.sql")),
    (3, "pool owner", include_str!("../../../migrations/postgres/0003_pool_owner.sql")),
    (4, "staged moves", include_str!("../../../migrations/postgres/0004_staged_moves.sql")),
    (5, "rolling upgrades", include_str!("../../../migrations/postgres/0005_rolling_upgrades.sql")),
    (6, "warm pools", include_str!("../../../migrations/postgres/0006_warm_pools.sql")),
    (7, "allow origins", include_str!("../../../migrations/postgres/0007_allow_origins.sql")),
    (8, "control plane", include_str!("../../../migrations/postgres/0008_control_plane.sql")),
    (9, "usage reports", include_str!("../../../migrations/postgres/0009_usage_reports.sql")),
    (10, "quotas", include_str!("../../../migrations/postgres/0010_quotas.sql")),
    (11, "targets", include_str!("../../../migrations/postgres/0011_targets.sql")),
    (12, "container images", include_str!("../../../migrations/postgres/0012_container_images.sql")),
    (13, "router sightings", include_str!("../../../migrations/postgres/0013_router_sightings.sql")),
    (14, "playback", include_str!("../../../migrations/postgres/0014_playback.sql")),
    (15, "cdn secrets", include_str!("../../../migrations/postgres/0015_cdn_secrets.sql")),
    (16, "custom domains", include_str!("../../../migrations/postgres/0016_custom_domains.sql")),
    (17, "node ca", include_str!("../../../migrations/postgres/0017_node_ca.sql")),
    (18, "encryption", include_str!("../../../migrations/postgres/0018_encryption.sql")),
    (19, "dash encryption", include_str!("../../../migrations/postgres/0019_dash_encryption.sql")),
    (20, "access logs", include_str!("../../../migrations/postgres/0020_access_logs.sql")),
    (21, "config generations", include_str!("../../../migrations/postgres/0021_config_generations.sql")),
    (22, "open operations", include_str!("../../../migrations/postgres/0022_open_operations.sql")),
    (23, "change stamps", include_str!("../../../migrations/postgres/0023_change_stamps.sql")),
];
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "foundation", include_str!("../../../migrations/sqlite/0001_foundation.sql")),
    (2, "nodes and usage", include_str!("../../../migrations/sqlite/0002_nodes_and_usage.sql")),
    (3, "pool owner", include_str!("../../../migrations/sqlite/0003_pool_owner.sql")),
    (4, "staged moves", include_str!("../../../migrations/sqlite/0004_staged_moves.sql")),
    (5, "rolling upgrades", include_str!("../../../migrations/sqlite/0005_rolling_upgrades.sql")),
    (6, "warm pools", include_str!("../../../migrations/sqlite/0006_warm_pools.sql")),
    (7, "allow origins", include_str!("../../../migrations/sqlite/0007_allow_origins.sql")),
    (8, "control plane", include_str!("../../../migrations/sqlite/0008_control_plane.sql")),
    (9, "usage reports", include_str!("../../../migrations/sqlite/0009_usage_reports.sql")),
    (10, "quotas", include_str!("../../../migrations/sqlite/0010_quotas.sql")),
    (11, "targets", include_str!("../../../migrations/sqlite/0011_targets.sql")),
    (12, "container images", include_str!("../../../migrations/sqlite/0012_container_images.sql")),
    (13, "router sightings", include_str!("../../../migrations/sqlite/0013_router_sightings.sql")),
    (14, "playback", include_str!("../../../migrations/sqlite/0014_playback.sql")),
    (15, "cdn secrets", include_str!("../../../migrations/sqlite/0015_cdn_secrets.sql")),
    (16, "custom domains", include_str!("../../../migrations/sqlite/0016_custom_domains.sql")),
    (17, "node ca", include_str!("../../../migrations/sqlite/0017_node_ca.sql")),
    (18, "encryption", include_str!("../../../migrations/sqlite/0018_encryption.sql")),
    (19, "dash encryption", include_str!("../../../migrations/sqlite/0019_dash_encryption.sql")),
    (20, "access logs", include_str!("../../../migrations/sqlite/0020_access_logs.sql")),
    (21, "config generations", include_str!("../../../migrations/sqlite/0021_config_generations.sql")),
    (22, "open operations", include_str!("../../../migrations/sqlite/0022_open_operations.sql")),
    (23, "change stamps", include_str!("../../../migrations/sqlite/0023_change_stamps.sql")),
];

fn migrator(set: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    let migrations = set
        .iter()
        .map(|(v, d, sql)| Migration::new(*v, Cow::Borrowed(*d), MigrationType::Simple, sql.into_sql_str(), false))
        .collect::<Vec<_>>();
    Migrator { migrations: Cow::Owned(migrations), ..Migrator::DEFAULT }
}

impl Store {
    /// Connects to `url` (`postgres://…` or `sqlite://path`), creating the SQLite file
    /// and its directory when missing, and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url).map_err(StoreError::Db)?;
            Backend::Postgres(PgPoolOptions::new().max_connections(16).connect_with(opts).await?)
        } else if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            let file = path.split('?').next().unwrap_or(path);
            if let Some(dir) = std::path::Path::new(file).parent().filter(|d| !d.as_os_str().is_empty()) {
                crate::keys::create_private_dir(dir)
                    .map_err(|source| StoreError::DataDir { path: dir.display().to_string(), source })?;
            }
            private_file(std::path::Path::new(file))?;
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(StoreError::Db)?
                .create_if_missing(true)
                .foreign_keys(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(std::time::Duration::from_secs(10));
            Backend::Sqlite(SqlitePoolOptions::new().max_connections(8).connect_with(opts).await?)
        } else {
            return Err(StoreError::Url(url.to_owned()));
        };
        let store = Store { backend };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the embedded migrations of this backend.
    pub async fn migrate(&self) -> Result<()> {
        match &self.backend {
            Backend::Postgres(p) => migrator(PG_MIGRATIONS).run(p).await?,
            Backend::Sqlite(p) => migrator(SQLITE_MIGRATIONS).run(p).await?,
        }
        Ok(())
    }

    /// `postgres` or `sqlite`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Postgres(_) => "postgres",
            Backend::Sqlite(_) => "sqlite",
        }
    }

    /// Ready when the store answers and every embedded migration is applied.
    pub async fn ready(&self) -> Result<bool> {
        let expected = match self.backend {
            Backend::Postgres(_) => PG_MIGRATIONS.len(),
            Backend::Sqlite(_) => SQLITE_MIGRATIONS.len(),
        };
        let applied: i64 = on_pool!(self, |p| {
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success").fetch_one(p).await?
        });
        Ok(usize::try_from(applied).unwrap_or(0) >= expected)
    }

    pub async fn close(&self) {
        on_pool!(self, |p| p.close().await)
    }
}

/// Makes the SQLite file (when missing) readable by its owner only, and keeps an
/// existing one so: it holds hashes, events and usage. SQLite gives its `-wal`
/// and `-shm` files the database file's mode.
fn private_file(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |source| StoreError::DataDir { path: path.display().to_string(), source };
    if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
        return Ok(());
    }
    std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)
}

/// The fewest nodes a shared pool runs with.
pub const SHARED_POOL_MIN_NODES: i32 = 2;
