//! Migrations: `migrations/<component>/NNNN_name.sql` beside the manifest, applied in order to
//! the component's database (SQLite, PostgreSQL or MySQL: `app::migrate` says which) at
//! start-up, at every deploy of it before the probe, and by `mosaic migrate`. Each runs once,
//! in a transaction with its record in `_mosaic_migrations`; an applied migration whose text
//! changed is refused. The rules live here once ([`apply_pending`]); a backend only says how
//! to read the records and run one migration ([`MigrationStore`]).

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    pub name: String,
    pub sql: String,
    pub checksum: String,
}

/// The migrations of one component, in order; empty when it has no folder.
pub fn load(dir: &Path) -> Result<Vec<Migration>, MigrationError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let entries =
        std::fs::read_dir(dir).map_err(|err| MigrationError(format!("cannot read {}: {err}", dir.display())))?;
    let mut migrations = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().to_string();
        let Some(stem) = file_name.strip_suffix(".sql") else {
            continue;
        };
        let (number, _) = stem.split_once('_').unwrap_or((stem, ""));
        let version: i64 = number.parse().map_err(|_| {
            MigrationError(format!(
                "{}: a migration is named NNNN_name.sql (e.g. 0001_create_users.sql); `{file_name}` does not start with a number",
                dir.display()
            ))
        })?;
        let sql = std::fs::read_to_string(&path)
            .map_err(|err| MigrationError(format!("cannot read {}: {err}", path.display())))?;
        if let Some(twin) = migrations.iter().find(|m: &&Migration| m.version == version) {
            return Err(MigrationError(format!(
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

/// What went wrong, naming the file or the database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MigrationError(pub String);

/// One applied migration, as `_mosaic_migrations` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: i64,
    pub name: String,
    pub checksum: String,
}

/// A database migrations run on.
#[allow(async_fn_in_trait)] // used with static dispatch only
pub trait MigrationStore {
    /// The database, as errors name it (`database `users``).
    fn describe(&self) -> String;
    /// Creates `_mosaic_migrations` if it is missing and returns its records.
    async fn applied(&mut self) -> Result<Vec<AppliedMigration>, String>;
    /// Runs `migration`'s text and inserts its record, in one transaction: when either fails,
    /// neither stays (MySQL keeps the DDL statements it committed on its own).
    async fn apply(&mut self, migration: &Migration, applied_at_unix_ms: i64) -> Result<(), String>;
}

/// Applies, in order, the migrations `store` has no record of; returns their names. An applied
/// migration whose checksum differs from its file is refused before anything runs.
pub async fn apply_pending(
    store: &mut impl MigrationStore,
    migrations: &[Migration],
) -> Result<Vec<String>, MigrationError> {
    let applied = store
        .applied()
        .await
        .map_err(|err| MigrationError(format!("{}: cannot read _mosaic_migrations: {err}", store.describe())))?;
    for migration in migrations {
        if let Some(record) = applied.iter().find(|record| record.version == migration.version) {
            if record.checksum != migration.checksum {
                return Err(MigrationError(format!(
                    "migration {} of {} was applied (as {}) with different content; never edit an applied \
                     migration: restore it and add a new one",
                    migration.name,
                    store.describe(),
                    record.name
                )));
            }
        }
    }
    let mut newly = Vec::new();
    for migration in migrations {
        if applied.iter().any(|record| record.version == migration.version) {
            continue;
        }
        store
            .apply(migration, crate::clock::now_unix_ms() as i64)
            .await
            .map_err(|err| {
                MigrationError(format!(
                    "migration {} of {} failed: {err}",
                    migration.name,
                    store.describe()
                ))
            })?;
        newly.push(migration.name.clone());
    }
    Ok(newly)
}
