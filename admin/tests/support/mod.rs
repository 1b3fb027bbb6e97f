//! Fresh stores for tests: a SQLite file in a temporary directory, or a new
//! PostgreSQL database (on `HEADWATER_TEST_DATABASE_URL`, default the local server)
//! so tests run in parallel without seeing each other.

#![allow(dead_code)]

use headwater_admin::store::Store;
use sqlx::Connection;

pub const PG_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A store and what is needed to reach its database behind its back.
pub struct TestDb {
    pub store: Store,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/headwater.db", dir.path().display());
    let store = Store::connect(&url).await.expect("sqlite store");
    TestDb { store, url, _dir: Some(dir) }
}

/// A URL to a brand-new, empty PostgreSQL database.
pub async fn fresh_postgres_url() -> String {
    let admin_url = std::env::var("HEADWATER_TEST_DATABASE_URL").unwrap_or_else(|_| PG_DEFAULT.into());
    let mut conn = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} is needed for the tests (scripts/test starts it): {e}"));
    let name = format!("hw_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create database");
    let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin_url);
    format!("{base}/{name}")
}

/// Drops a database made by [`fresh_postgres_url`] (its connections are ended),
/// so a test leaves none behind. Blocking: for `Drop`.
pub fn drop_postgres(url: &str) {
    let Some(name) = url.rsplit('/').next().filter(|n| n.starts_with("hw_test_")).map(str::to_owned) else {
        return;
    };
    let admin_url = std::env::var("HEADWATER_TEST_DATABASE_URL").unwrap_or_else(|_| PG_DEFAULT.into());
    let dropped = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        rt.block_on(async {
            let mut conn = sqlx::PgConnection::connect(&admin_url).await.ok()?;
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                .execute(&mut conn)
                .await
                .ok()
        })
    })
    .join();
    if !matches!(dropped, Ok(Some(_))) {
        eprintln!("could not drop the test database {url}; the next scripts/test drops it");
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.url.starts_with("postgres") {
            drop_postgres(&self.url);
        }
    }
}

pub async fn postgres() -> TestDb {
    let url = fresh_postgres_url().await;
    let store = Store::connect(&url).await.expect("postgres store");
    TestDb { store, url, _dir: None }
}

/// Runs raw SQL against the test database, as something other than the store would.
pub async fn raw_execute(url: &str, sql: &str) -> Result<u64, String> {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    if url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(url).await.map_err(|e| e.to_string())?;
        sqlx::query(sql).execute(&mut c).await.map(|r| r.rows_affected()).map_err(|e| e.to_string())
    } else {
        let mut c = sqlx::SqliteConnection::connect(url).await.map_err(|e| e.to_string())?;
        sqlx::query("PRAGMA foreign_keys = ON").execute(&mut c).await.map_err(|e| e.to_string())?;
        sqlx::query(sql).execute(&mut c).await.map(|r| r.rows_affected()).map_err(|e| e.to_string())
    }
}

/// Reads one integer with raw SQL.
pub async fn raw_count(url: &str, sql: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    if url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::query_scalar(sql).fetch_one(&mut c).await.expect("count")
    } else {
        let mut c = sqlx::SqliteConnection::connect(url).await.expect("connect");
        sqlx::query_scalar(sql).fetch_one(&mut c).await.expect("count")
    }
}

/// Reads one text value (or none) with raw SQL.
pub async fn raw_text(url: &str, sql: &str) -> Option<String> {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    if url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::query_scalar(sql).fetch_optional(&mut c).await.expect("text")
    } else {
        let mut c = sqlx::SqliteConnection::connect(url).await.expect("connect");
        sqlx::query_scalar(sql).fetch_optional(&mut c).await.expect("text")
    }
}

/// Declares each listed `async fn(TestDb)` as two tests, one per backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite_backend {
            $(#[tokio::test] async fn $case() { super::$case(super::support::sqlite().await).await; })*
        }
        mod postgres_backend {
            $(#[tokio::test] async fn $case() { super::$case(super::support::postgres().await).await; })*
        }
    };
}
