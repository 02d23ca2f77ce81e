//! Applying `migrations/<component>/` to the component's database: at `mosaic up`, at every
//! deploy of it (the pipeline's `migrate` step), and on its own with `mosaic migrate` (e.g. to
//! prepare the database files a Spin runtime config names, before `spin up`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::capability::mysql::MysqlPools;
use crate::capability::postgres::PgPools;
use crate::capability::sqlite::Databases;
use crate::settings::MigrationTarget;

/// The backends a migration can run on.
pub struct MigrationBackends<'a> {
    pub sqlite: &'a Databases,
    pub postgres: &'a PgPools,
    pub mysql: &'a MysqlPools,
}

/// Where a component's migrations go: the PostgreSQL or MySQL database of `[migrations.NAME]`
/// in mosaic.toml, or else the first label of its `sqlite_databases`.
pub struct MigrationPlan<'a> {
    pub manifest_dir: &'a Path,
    pub targets: &'a BTreeMap<String, MigrationTarget>,
}

impl MigrationPlan<'_> {
    /// Applies the component's migrations not applied yet; returns the kind of database and
    /// the names of the migrations applied now (none when it has no migrations folder).
    pub async fn apply(
        &self,
        backends: &MigrationBackends<'_>,
        component: &str,
        sqlite_databases: &[String],
    ) -> Result<(&'static str, Vec<String>), String> {
        let dir = self.manifest_dir.join("migrations").join(component);
        let migrations = crate::migrations::load(&dir).map_err(|err| err.0)?;
        if migrations.is_empty() {
            return Ok(("none", Vec::new()));
        }
        match self.targets.get(component) {
            Some(MigrationTarget::Postgres(address)) => {
                let connection = backends.postgres.connect(address).await.map_err(|err| err.message())?;
                let applied = connection.migrate(&migrations).await.map_err(|err| err.0)?;
                Ok(("PostgreSQL", applied))
            }
            Some(MigrationTarget::Mysql(address)) => {
                let connection = backends.mysql.connect(address).await.map_err(|err| err.message())?;
                let applied = connection.migrate(&migrations).await.map_err(|err| err.0)?;
                Ok(("MySQL", applied))
            }
            None => {
                let Some(label) = sqlite_databases.first() else {
                    return Err(format!(
                        "{} holds migrations, but component `{component}` has no sqlite_databases to apply them to \
                         (or name a PostgreSQL or MySQL database in mosaic.toml: [migrations.{component}] postgres = \"...\" or mysql = \"...\")",
                        dir.display(),
                    ));
                };
                let database = backends.sqlite.open(label).await.map_err(|err| err.0)?;
                let applied = database.migrate(&migrations).await.map_err(|err| err.0)?;
                Ok(("SQLite", applied))
            }
        }
    }
}
