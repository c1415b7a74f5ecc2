//! One Postgres database per test, cloned from a migrated template.
//!
//! The template's name carries a hash of the migrations, so a changed
//! migration gets a new template. It is created once, under an advisory
//! lock (nextest runs tests as parallel processes), and its pool is closed
//! before cloning: `CREATE DATABASE … TEMPLATE` fails while the template
//! has connections.

use natter_platform::db;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use std::str::FromStr;

/// A database that is dropped with this value.
pub struct TestDatabase {
    /// Its URL.
    pub url: String,
    name: String,
    admin_url: String,
}

const TEMPLATE_LOCK: i64 = 0x6e61_7474_6572_7465;

fn server_url() -> String {
    std::env::var("NATTER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_database(url: &str, name: &str) -> String {
    PgConnectOptions::from_str(url)
        .expect("NATTER_TEST_DATABASE_URL is a Postgres URL")
        .database(name)
        .to_url_lossy()
        .to_string()
}

impl TestDatabase {
    /// Creates a fresh, migrated database.
    ///
    /// # Panics
    /// When Postgres does not answer: there is no test without it.
    pub async fn create() -> Self {
        // Tests that start here build HTTP clients next.
        natter_platform::tls::install_crypto_provider();
        let admin_url = server_url();
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("Postgres answers on NATTER_TEST_DATABASE_URL (start it: see README)");
        let template = ensure_template(&mut admin, &admin_url).await;
        let name = format!("natter_test_{}", uuid::Uuid::new_v4().simple());
        let sql = format!(
            "CREATE DATABASE {} TEMPLATE {}",
            db::quote_ident(&name),
            db::quote_ident(&template)
        );
        // Another process may be touching the template for a moment.
        execute_retrying(&mut admin, &sql, 21, "cloning the test database").await;
        admin.close().await.ok();
        Self {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }

    /// Creates an empty database, without even the migrations: for tests
    /// of the migrations themselves.
    ///
    /// # Panics
    /// When Postgres does not answer.
    pub async fn empty() -> Self {
        let admin_url = server_url();
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("Postgres answers on NATTER_TEST_DATABASE_URL (start it: see README)");
        let name = format!("natter_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {}", db::quote_ident(&name)))
            .execute(&mut admin)
            .await
            .expect("creating an empty database");
        admin.close().await.ok();
        Self {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }

    /// A small pool on it.
    ///
    /// # Panics
    /// When Postgres does not answer.
    pub async fn pool(&self) -> PgPool {
        db::connect_with(&self.url, 4, &db::SessionSettings::default())
            .await
            .expect("test pool")
    }
}

async fn ensure_template(admin: &mut PgConnection, admin_url: &str) -> String {
    let mut hasher = Sha256::new();
    for m in db::MIGRATOR.iter() {
        hasher.update(m.version.to_le_bytes());
        hasher.update(&*m.checksum);
    }
    let digest = hasher.finalize();
    let name = format!("natter_template_{}", &hex::encode(digest)[..16]);
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut *admin)
        .await
        .expect("template lock");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut *admin)
            .await
            .expect("template lookup");
    if !exists {
        let building = format!("{name}_building");
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {}",
            db::quote_ident(&building)
        ))
        .execute(&mut *admin)
        .await
        .expect("drop stale template");
        sqlx::query(&format!("CREATE DATABASE {}", db::quote_ident(&building)))
            .execute(&mut *admin)
            .await
            .expect("create template");
        let pool = db::connect_with(
            &with_database(admin_url, &building),
            1,
            &db::SessionSettings::default(),
        )
        .await
        .expect("template pool");
        db::migrate(&pool).await.expect("migrate template");
        pool.close().await;
        // Renamed only when complete, so a crash never leaves a half-made
        // template under the real name. The pool's backend may still be
        // exiting after its connection closed ("being accessed by other
        // users"), so the rename is tried again for a moment.
        let rename = format!(
            "ALTER DATABASE {} RENAME TO {}",
            db::quote_ident(&building),
            db::quote_ident(&name)
        );
        execute_retrying(admin, &rename, 50, "publish template").await;
    }
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut *admin)
        .await
        .expect("template unlock");
    name
}

/// Runs `sql`, tried again every 100 ms up to `tries` times in all while
/// Postgres refuses it (a database another session is still leaving).
///
/// # Panics
/// When the last try fails, with `what` and the error.
async fn execute_retrying(admin: &mut PgConnection, sql: &str, tries: u32, what: &str) {
    let mut tried = 1;
    while let Err(e) = sqlx::query(sql).execute(&mut *admin).await {
        assert!(tried < tries, "{what}: {e}");
        tried += 1;
        tracing::debug!(error = %e, what, "trying again");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let sql = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            db::quote_ident(&self.name)
        );
        crate::block_on_cleanup(async move {
            if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                let _ = sqlx::query(&sql).execute(&mut admin).await;
            }
        });
    }
}
