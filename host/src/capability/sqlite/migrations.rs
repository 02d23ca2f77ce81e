//! Migrations: `migrations/<component>/NNNN_name.sql` beside the manifest, applied in order to
//! the component's SQLite database (the first label of its `sqlite_databases`) at start-up and
//! at every deploy of it, before the probe. Each runs once, in a transaction with its record in
//! `_mosaic_migrations`; an applied migration whose text changed is refused.

use std::path::Path;

use sqlx::{Connection, Executor};

use super::{Database, SqlError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    pub name: String,
    pub sql: String,
    pub checksum: String,
}

/// The migrations of one component, in order; empty when it has no folder.
pub fn load(dir: &Path) -> Result<Vec<Migration>, SqlError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(dir).map_err(|err| SqlError(format!("cannot read {}: {err}", dir.display())))?;
    let mut migrations = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().to_string();
        let Some(stem) = file_name.strip_suffix(".sql") else {
            continue;
        };
        let (number, _) = stem.split_once('_').unwrap_or((stem, ""));
        let version: i64 = number.parse().map_err(|_| {
            SqlError(format!(
                "{}: a migration is named NNNN_name.sql (e.g. 0001_create_users.sql); `{file_name}` does not start with a number",
                dir.display()
            ))
        })?;
        let sql =
            std::fs::read_to_string(&path).map_err(|err| SqlError(format!("cannot read {}: {err}", path.display())))?;
        if let Some(twin) = migrations.iter().find(|m: &&Migration| m.version == version) {
            return Err(SqlError(format!(
                "{}: `{file_name}` and `{}` have the same number {version}",
                dir.display(),
                twin.name
            )));
        }
        let checksum = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(sql.as_bytes()))
        };
        migrations.push(Migration {
            version,
            name: file_name,
            sql,
            checksum,
        });
    }
    migrations.sort_by_key(|m| m.version);
    Ok(migrations)
}

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
    pub async fn migrate(&self, migrations: &[Migration]) -> Result<Vec<String>, SqlError> {
        let fail = |err: sqlx::Error| SqlError(format!("database `{}`: {err}", self.label));
        let mut connection = self.pool.acquire().await.map_err(fail)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS _mosaic_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, \
             checksum TEXT NOT NULL, applied_at_unix_ms INTEGER NOT NULL)",
        )
        .execute(&mut *connection)
        .await
        .map_err(fail)?;
        let applied: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT version, name, checksum FROM _mosaic_migrations")
                .fetch_all(&mut *connection)
                .await
                .map_err(fail)?;
        let mut newly = Vec::new();
        for migration in migrations {
            if let Some((_, name, checksum)) = applied.iter().find(|(version, _, _)| *version == migration.version) {
                if *checksum != migration.checksum {
                    return Err(SqlError(format!(
                        "migration {} of database `{}` was applied (as {name}) with different content; never edit an \
                         applied migration: restore it and add a new one",
                        migration.name, self.label
                    )));
                }
                continue;
            }
            let mut transaction = connection.begin().await.map_err(fail)?;
            // A plain string runs every statement of the file.
            (&mut *transaction)
                .execute(migration.sql.as_str())
                .await
                .map_err(|err| {
                    SqlError(format!(
                        "migration {} of database `{}` failed: {err}",
                        migration.name, self.label
                    ))
                })?;
            sqlx::query(
                "INSERT INTO _mosaic_migrations (version, name, checksum, applied_at_unix_ms) VALUES (?, ?, ?, ?)",
            )
            .bind(migration.version)
            .bind(&migration.name)
            .bind(&migration.checksum)
            .bind(crate::clock::now_unix_ms() as i64)
            .execute(&mut *transaction)
            .await
            .map_err(fail)?;
            transaction.commit().await.map_err(fail)?;
            newly.push(migration.name.clone());
        }
        Ok(newly)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
