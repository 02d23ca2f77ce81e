//! SQLite as a [`MigrationStore`], and `mosaic up --sqlite`'s scripts.

use sqlx::pool::PoolConnection;
use sqlx::{Connection, Executor, Sqlite};

use super::{Database, SqlError};
use crate::migrations::{AppliedMigration, Migration, MigrationError, MigrationStore};

impl Database {
    /// Runs every statement of `script` in one transaction (`mosaic up --sqlite`).
    pub async fn run_script(&self, script: &str) -> Result<(), SqlError> {
        let mut connection = self.pool.acquire().await.map_err(|err| self.failed(err))?;
        let mut transaction = connection.begin().await.map_err(|err| self.failed(err))?;
        (&mut *transaction)
            .execute(script)
            .await
            .map_err(|err| self.failed(err))?;
        transaction.commit().await.map_err(|err| self.failed(err))
    }

    /// Applies the migrations not applied yet; returns their names.
    pub async fn migrate(&self, migrations: &[Migration]) -> Result<Vec<String>, MigrationError> {
        let connection = self
            .pool
            .acquire()
            .await
            .map_err(|err| MigrationError(self.failed(err).0))?;
        let mut store = SqliteMigrations {
            label: &self.label,
            connection,
        };
        crate::migrations::apply_pending(&mut store, migrations).await
    }
}

struct SqliteMigrations<'a> {
    label: &'a str,
    connection: PoolConnection<Sqlite>,
}

impl MigrationStore for SqliteMigrations<'_> {
    fn describe(&self) -> String {
        format!("database `{}`", self.label)
    }

    async fn applied(&mut self) -> Result<Vec<AppliedMigration>, String> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS _mosaic_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, \
             checksum TEXT NOT NULL, applied_at_unix_ms INTEGER NOT NULL)",
        )
        .execute(&mut *self.connection)
        .await
        .map_err(|err| err.to_string())?;
        let rows: Vec<(i64, String, String)> = sqlx::query_as("SELECT version, name, checksum FROM _mosaic_migrations")
            .fetch_all(&mut *self.connection)
            .await
            .map_err(|err| err.to_string())?;
        Ok(rows
            .into_iter()
            .map(|(version, name, checksum)| AppliedMigration {
                version,
                name,
                checksum,
            })
            .collect())
    }

    async fn apply(&mut self, migration: &Migration, applied_at_unix_ms: i64) -> Result<(), String> {
        let mut transaction = self.connection.begin().await.map_err(|err| err.to_string())?;
        // A plain string runs every statement of the file.
        (&mut *transaction)
            .execute(migration.sql.as_str())
            .await
            .map_err(|err| err.to_string())?;
        sqlx::query("INSERT INTO _mosaic_migrations (version, name, checksum, applied_at_unix_ms) VALUES (?, ?, ?, ?)")
            .bind(migration.version)
            .bind(&migration.name)
            .bind(&migration.checksum)
            .bind(applied_at_unix_ms)
            .execute(&mut *transaction)
            .await
            .map_err(|err| err.to_string())?;
        transaction.commit().await.map_err(|err| err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::load;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("mosaic-migrations-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn applies_once_in_order_and_refuses_edits() {
        let dir = temp("order");
        std::fs::write(dir.join("0002_add.sql"), "INSERT INTO t (v) VALUES ('two');").unwrap();
        std::fs::write(
            dir.join("0001_create.sql"),
            "CREATE TABLE t (v TEXT); INSERT INTO t (v) VALUES ('one');",
        )
        .unwrap();
        std::fs::write(dir.join("README.md"), "not a migration").unwrap();
        let database = Database::open("test", &dir.join("db.sqlite")).await.unwrap();
        let migrations = load(&dir).unwrap();
        assert_eq!(
            database.migrate(&migrations).await.unwrap(),
            vec!["0001_create.sql", "0002_add.sql"]
        );
        assert!(
            database.migrate(&migrations).await.unwrap().is_empty(),
            "each runs once"
        );
        let rows = database
            .execute("SELECT v FROM t ORDER BY rowid", vec![])
            .await
            .unwrap()
            .rows;
        assert_eq!(rows.len(), 2);

        std::fs::write(dir.join("0001_create.sql"), "CREATE TABLE t (v TEXT, w TEXT);").unwrap();
        let err = database.migrate(&load(&dir).unwrap()).await.unwrap_err().0;
        assert!(err.contains("0001_create.sql") && err.contains("never edit"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_failing_migration_is_not_recorded() {
        let dir = temp("fail");
        std::fs::write(dir.join("0001_bad.sql"), "CREATE TABLE ok (v TEXT); THIS IS NOT SQL;").unwrap();
        let database = Database::open("test", &dir.join("db.sqlite")).await.unwrap();
        let err = database.migrate(&load(&dir).unwrap()).await.unwrap_err().0;
        assert!(err.contains("0001_bad.sql") && err.contains("syntax error"), "{err}");
        let tables = database
            .execute("SELECT name FROM sqlite_master WHERE name = 'ok'", vec![])
            .await
            .unwrap();
        assert!(tables.rows.is_empty(), "the whole migration rolled back");
        std::fs::write(dir.join("0001_bad.sql"), "CREATE TABLE ok (v TEXT);").unwrap();
        assert_eq!(
            database.migrate(&load(&dir).unwrap()).await.unwrap(),
            vec!["0001_bad.sql"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let bad_name = temp("name");
        std::fs::write(bad_name.join("init.sql"), "").unwrap();
        assert!(load(&bad_name).unwrap_err().0.contains("NNNN_name.sql"));
        std::fs::remove_dir_all(&bad_name).unwrap();
    }
}
