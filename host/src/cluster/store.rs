//! The cluster store in PostgreSQL: component sources by digest, the desired version of every
//! component, the rollout log (for a cluster-wide rollback), and what each host reports it
//! runs. A change of a desired version is announced with `NOTIFY` on [`CHANNEL`].

use std::collections::BTreeMap;

use deadpool_postgres::Pool;
use serde::Serialize;

use crate::backends::redact_postgres;

/// The `LISTEN`/`NOTIFY` channel; the payload is the namespace whose desired versions changed.
pub const CHANNEL: &str = "mosaic_desired";

/// Connections a host keeps to the store (the listener has its own).
const POOL_SIZE: usize = 4;

/// Created once per database; an advisory lock keeps two hosts starting at once from racing.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mosaic_sources (
    digest TEXT PRIMARY KEY,
    source BYTEA NOT NULL,
    stored_at_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS mosaic_desired (
    namespace TEXT NOT NULL,
    component TEXT NOT NULL,
    digest TEXT NOT NULL REFERENCES mosaic_sources (digest),
    route TEXT,
    action TEXT NOT NULL,
    generation BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (namespace, component)
);
CREATE TABLE IF NOT EXISTS mosaic_rollouts (
    id BIGSERIAL PRIMARY KEY,
    namespace TEXT NOT NULL,
    component TEXT NOT NULL,
    digest TEXT NOT NULL,
    previous TEXT,
    action TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    by_host TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS mosaic_rollouts_by_component ON mosaic_rollouts (namespace, component, id);
CREATE TABLE IF NOT EXISTS mosaic_hosts (
    namespace TEXT NOT NULL,
    host TEXT NOT NULL,
    http_addr TEXT NOT NULL,
    admin_addr TEXT NOT NULL,
    started_at_ms BIGINT NOT NULL,
    seen_at_ms BIGINT NOT NULL,
    versions JSONB NOT NULL,
    errors JSONB NOT NULL,
    PRIMARY KEY (namespace, host)
);
";

/// Why the store could not do something; the text names the server (never its password).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// The version every host of the namespace should run of one component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Desired {
    pub component: String,
    pub digest: String,
    /// The route of a component added with `deploy --route` (absent for manifest components).
    pub route: Option<String>,
    /// `deploy` or `rollback`.
    pub action: String,
    pub generation: i64,
    pub updated_at_ms: i64,
    pub updated_by: String,
}

/// One host as it last reported itself.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct HostReport {
    pub host: String,
    pub http_addr: String,
    pub admin_addr: String,
    pub started_at_ms: i64,
    pub seen_at_ms: i64,
    /// component → the digest it serves.
    pub versions: BTreeMap<String, String>,
    /// component → why it does not run the desired version (the failed step), if it does not.
    pub errors: BTreeMap<String, String>,
}

/// A change of one component's desired version.
pub struct NewDesired<'a> {
    pub component: &'a str,
    pub digest: &'a str,
    pub source: &'a [u8],
    pub route: Option<&'a str>,
    pub action: &'a str,
    /// The version it replaces where the store has none yet (the host's own, e.g. the
    /// manifest's), with its source, so that a rollback can go back to it on every host.
    pub replaced: Option<(&'a str, &'a [u8])>,
}

pub struct ClusterStore {
    pool: Pool,
    address: String,
    pub namespace: String,
}

impl ClusterStore {
    /// Connects and creates the tables if they are missing.
    pub async fn open(address: &str, namespace: &str) -> Result<ClusterStore, StoreError> {
        let pool = crate::backends::postgres_pool(address, POOL_SIZE).map_err(StoreError)?;
        let store = ClusterStore {
            pool,
            address: address.to_string(),
            namespace: namespace.to_string(),
        };
        let mut client = store.client().await?;
        let transaction = client.transaction().await.map_err(|err| store.failed("begin", err))?;
        transaction
            .batch_execute("SELECT pg_advisory_xact_lock(7301995)")
            .await
            .map_err(|err| store.failed("lock the schema", err))?;
        transaction
            .batch_execute(SCHEMA)
            .await
            .map_err(|err| store.failed("create the cluster tables", err))?;
        transaction
            .commit()
            .await
            .map_err(|err| store.failed("create the cluster tables", err))?;
        Ok(store)
    }

    /// The address, to open the listening connection with.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn shown_address(&self) -> String {
        redact_postgres(&self.address)
    }

    fn failed(&self, doing: &str, err: impl std::fmt::Display) -> StoreError {
        StoreError(format!(
            "the cluster store (PostgreSQL at {}) failed to {doing}: {err}; is the server running? \
             It is set by [cluster] postgres in mosaic.toml or --cluster",
            self.shown_address()
        ))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|err| self.failed("connect", err))
    }

    /// Every desired version of the namespace.
    pub async fn desired(&self) -> Result<Vec<Desired>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT component, digest, route, action, generation, updated_at_ms, updated_by \
                 FROM mosaic_desired WHERE namespace = $1 ORDER BY component",
                &[&self.namespace],
            )
            .await
            .map_err(|err| self.failed("read the desired versions", err))?;
        Ok(rows
            .iter()
            .map(|row| Desired {
                component: row.get(0),
                digest: row.get(1),
                route: row.get(2),
                action: row.get(3),
                generation: row.get(4),
                updated_at_ms: row.get(5),
                updated_by: row.get(6),
            })
            .collect())
    }

    /// The stored source of `digest`, if the store has it.
    pub async fn source(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT source FROM mosaic_sources WHERE digest = $1", &[&digest])
            .await
            .map_err(|err| self.failed("read a component source", err))?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Makes `change` the desired version of its component on every host, in one transaction,
    /// and notifies the hosts. Returns the digest it replaced in the store, if any.
    pub async fn set_desired(&self, change: &NewDesired<'_>, by_host: &str) -> Result<Option<String>, StoreError> {
        let now = crate::capability::messaging::now_unix_ms() as i64;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|err| self.failed("begin", err))?;
        let store_source = |digest: &str, source: &[u8]| {
            let (digest, source) = (digest.to_string(), source.to_vec());
            let tx = &tx;
            async move {
                tx.execute(
                    "INSERT INTO mosaic_sources (digest, source, stored_at_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (digest) DO NOTHING",
                    &[&digest, &source, &now],
                )
                .await
            }
        };
        store_source(change.digest, change.source)
            .await
            .map_err(|err| self.failed("store the component source", err))?;
        let current: Option<String> = tx
            .query_opt(
                "SELECT digest FROM mosaic_desired WHERE namespace = $1 AND component = $2 FOR UPDATE",
                &[&self.namespace, &change.component],
            )
            .await
            .map_err(|err| self.failed("read the desired version", err))?
            .map(|row| row.get(0));
        let previous = match (&current, change.replaced) {
            (Some(current), _) => Some(current.clone()),
            (None, Some((digest, source))) if digest != change.digest => {
                store_source(digest, source)
                    .await
                    .map_err(|err| self.failed("store the replaced source", err))?;
                // The version every host ran before the first cluster-wide change.
                tx.execute(
                    "INSERT INTO mosaic_rollouts (namespace, component, digest, previous, action, at_ms, by_host) \
                     VALUES ($1, $2, $3, NULL, 'manifest', $4, $5)",
                    &[&self.namespace, &change.component, &digest, &now, &by_host],
                )
                .await
                .map_err(|err| self.failed("record the rollout", err))?;
                Some(digest.to_string())
            }
            (None, _) => None,
        };
        tx.execute(
            "INSERT INTO mosaic_desired (namespace, component, digest, route, action, generation, updated_at_ms, updated_by) \
             VALUES ($1, $2, $3, $4, $5, 1, $6, $7) \
             ON CONFLICT (namespace, component) DO UPDATE SET digest = EXCLUDED.digest, route = EXCLUDED.route, \
             action = EXCLUDED.action, generation = mosaic_desired.generation + 1, \
             updated_at_ms = EXCLUDED.updated_at_ms, updated_by = EXCLUDED.updated_by",
            &[
                &self.namespace,
                &change.component,
                &change.digest,
                &change.route,
                &change.action,
                &now,
                &by_host,
            ],
        )
        .await
        .map_err(|err| self.failed("write the desired version", err))?;
        tx.execute(
            "INSERT INTO mosaic_rollouts (namespace, component, digest, previous, action, at_ms, by_host) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &self.namespace,
                &change.component,
                &change.digest,
                &previous,
                &change.action,
                &now,
                &by_host,
            ],
        )
        .await
        .map_err(|err| self.failed("record the rollout", err))?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.namespace])
            .await
            .map_err(|err| self.failed("notify the hosts", err))?;
        tx.commit()
            .await
            .map_err(|err| self.failed("commit the desired version", err))?;
        Ok(previous)
    }

    /// The version a cluster-wide rollback of `component` goes to: the one the desired
    /// version replaced when it became desired. None when there is no desired version yet.
    pub async fn rollback_target(&self, component: &str) -> Result<Option<(String, Option<String>)>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT d.digest, (SELECT r.previous FROM mosaic_rollouts r \
                   WHERE r.namespace = d.namespace AND r.component = d.component AND r.digest = d.digest \
                   ORDER BY r.id DESC LIMIT 1) \
                 FROM mosaic_desired d WHERE d.namespace = $1 AND d.component = $2",
                &[&self.namespace, &component],
            )
            .await
            .map_err(|err| self.failed("read the rollout log", err))?;
        Ok(row.map(|row| (row.get(0), row.get(1))))
    }

    /// Records what this host runs now (and why a component is not on its desired version);
    /// also its heartbeat.
    pub async fn report(&self, report: &HostReport) -> Result<(), StoreError> {
        let client = self.client().await?;
        let versions = serde_json::to_value(&report.versions).unwrap_or_default();
        let errors = serde_json::to_value(&report.errors).unwrap_or_default();
        client
            .execute(
                "INSERT INTO mosaic_hosts (namespace, host, http_addr, admin_addr, started_at_ms, seen_at_ms, versions, errors) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (namespace, host) DO UPDATE SET http_addr = EXCLUDED.http_addr, \
                 admin_addr = EXCLUDED.admin_addr, started_at_ms = EXCLUDED.started_at_ms, \
                 seen_at_ms = EXCLUDED.seen_at_ms, versions = EXCLUDED.versions, errors = EXCLUDED.errors",
                &[
                    &self.namespace,
                    &report.host,
                    &report.http_addr,
                    &report.admin_addr,
                    &report.started_at_ms,
                    &report.seen_at_ms,
                    &versions,
                    &errors,
                ],
            )
            .await
            .map_err(|err| self.failed("record this host's versions", err))?;
        Ok(())
    }

    /// Every host of the namespace as it last reported, oldest name first.
    pub async fn hosts(&self) -> Result<Vec<HostReport>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT host, http_addr, admin_addr, started_at_ms, seen_at_ms, versions, errors \
                 FROM mosaic_hosts WHERE namespace = $1 ORDER BY host",
                &[&self.namespace],
            )
            .await
            .map_err(|err| self.failed("read the hosts", err))?;
        Ok(rows
            .iter()
            .map(|row| HostReport {
                host: row.get(0),
                http_addr: row.get(1),
                admin_addr: row.get(2),
                started_at_ms: row.get(3),
                seen_at_ms: row.get(4),
                versions: serde_json::from_value(row.get(5)).unwrap_or_default(),
                errors: serde_json::from_value(row.get(6)).unwrap_or_default(),
            })
            .collect())
    }

    /// A host that stops leaves the list.
    pub async fn leave(&self, host: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM mosaic_hosts WHERE namespace = $1 AND host = $2",
                &[&self.namespace, &host],
            )
            .await
            .map_err(|err| self.failed("remove this host", err))?;
        Ok(())
    }

    /// Forgets hosts that have not reported since `before_ms` (killed, never to return).
    pub async fn forget_hosts_silent_since(&self, before_ms: i64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM mosaic_hosts WHERE namespace = $1 AND seen_at_ms < $2",
                &[&self.namespace, &before_ms],
            )
            .await
            .map_err(|err| self.failed("forget silent hosts", err))
    }
}
