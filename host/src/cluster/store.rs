//! The cluster store in PostgreSQL: component sources by digest, the desired version of every
//! component, the rollout log (for a cluster-wide rollback), and what each host reports it
//! runs. A change of a desired version is announced with `NOTIFY` on [`CHANNEL`].

use std::collections::BTreeMap;

use deadpool_postgres::Pool;
use serde::Serialize;

use crate::app::canary::{CanaryPolicy, Counts};
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
ALTER TABLE mosaic_rollouts ADD COLUMN IF NOT EXISTS reason TEXT;
CREATE TABLE IF NOT EXISTS mosaic_canaries (
    namespace TEXT NOT NULL,
    component TEXT NOT NULL,
    digest TEXT NOT NULL REFERENCES mosaic_sources (digest),
    stable TEXT NOT NULL,
    policy JSONB NOT NULL,
    share_bp INTEGER NOT NULL,
    step INTEGER NOT NULL,
    started_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (namespace, component)
);
CREATE TABLE IF NOT EXISTS mosaic_canary_counts (
    namespace TEXT NOT NULL,
    component TEXT NOT NULL,
    digest TEXT NOT NULL,
    host TEXT NOT NULL,
    stable_requests BIGINT NOT NULL,
    stable_errors BIGINT NOT NULL,
    canary_requests BIGINT NOT NULL,
    canary_errors BIGINT NOT NULL,
    reported_at_ms BIGINT NOT NULL,
    PRIMARY KEY (namespace, component, digest, host)
);
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

/// A canary every host of the namespace runs beside the stable version of its component.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ClusterCanary {
    pub component: String,
    pub digest: String,
    pub stable: String,
    pub policy: CanaryPolicy,
    pub share_bp: u32,
    pub step: u32,
    pub started_at_ms: i64,
    pub updated_at_ms: i64,
    pub updated_by: String,
}

/// A canary that starts in the cluster: its source, and the stable version's (the way back on
/// every host after a promotion).
pub struct NewCanary<'a> {
    pub component: &'a str,
    pub digest: &'a str,
    pub source: &'a [u8],
    pub stable: &'a str,
    pub stable_source: Option<&'a [u8]>,
    pub policy: &'a CanaryPolicy,
    pub share_bp: u32,
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
        let now = now_ms();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|err| self.failed("begin", err))?;
        self.store_source(&tx, change.digest, change.source).await?;
        let current = self.desired_for_update(&tx, change.component).await?;
        let previous = match (&current, change.replaced) {
            (Some(current), _) => Some(current.clone()),
            (None, Some((digest, source))) if digest != change.digest => {
                self.store_source(&tx, digest, source).await?;
                // The version every host ran before the first cluster-wide change.
                self.record_rollout(&tx, change.component, digest, None, "manifest", None, by_host)
                    .await?;
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
        self.record_rollout(
            &tx,
            change.component,
            change.digest,
            previous.as_deref(),
            change.action,
            None,
            by_host,
        )
        .await?;
        self.notify_and_commit(tx).await?;
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
                   AND r.action NOT IN ('canary', 'canary_step', 'canary_rollback', 'auto_rollback') \
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

    /// Every canary in progress in the namespace.
    pub async fn canaries(&self) -> Result<Vec<ClusterCanary>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT component, digest, stable, policy, share_bp, step, started_at_ms, updated_at_ms, updated_by \
                 FROM mosaic_canaries WHERE namespace = $1 ORDER BY component",
                &[&self.namespace],
            )
            .await
            .map_err(|err| self.failed("read the canaries", err))?;
        rows.iter()
            .map(|row| {
                let policy: serde_json::Value = row.get(3);
                let policy = serde_json::from_value(policy).map_err(|err| {
                    StoreError(format!(
                        "the cluster store's canary of `{}` has a policy this host cannot read: {err}",
                        row.get::<_, String>(0)
                    ))
                })?;
                Ok(ClusterCanary {
                    component: row.get(0),
                    digest: row.get(1),
                    stable: row.get(2),
                    policy,
                    share_bp: u32::try_from(row.get::<_, i32>(4)).unwrap_or(0),
                    step: u32::try_from(row.get::<_, i32>(5)).unwrap_or(0),
                    started_at_ms: row.get(6),
                    updated_at_ms: row.get(7),
                    updated_by: row.get(8),
                })
            })
            .collect()
    }

    /// Starts `canary` on every host: refused while another canary of the component is in
    /// progress, or when the cluster's desired version is not the canary's stable one.
    pub async fn start_canary(&self, canary: &NewCanary<'_>, by_host: &str) -> Result<(), StoreError> {
        let now = now_ms();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|err| self.failed("begin", err))?;
        self.store_source(&tx, canary.digest, canary.source).await?;
        if let Some(stable_source) = canary.stable_source {
            self.store_source(&tx, canary.stable, stable_source).await?;
        }
        let desired = self.desired_for_update(&tx, canary.component).await?;
        if let Some(desired) = desired.filter(|desired| desired != canary.stable) {
            return Err(StoreError(format!(
                "the cluster's desired version of `{}` is {}, not the {} this host runs; wait until \
                 this host has converged (mosaic status) and start the canary again",
                canary.component,
                crate::digest::short(&desired),
                crate::digest::short(canary.stable)
            )));
        }
        let policy = serde_json::to_value(canary.policy).unwrap_or_default();
        let share = i32::try_from(canary.share_bp).unwrap_or(i32::MAX);
        let inserted = tx
            .execute(
                "INSERT INTO mosaic_canaries (namespace, component, digest, stable, policy, share_bp, step, \
                 started_at_ms, updated_at_ms, updated_by) VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $7, $8) \
                 ON CONFLICT (namespace, component) DO NOTHING",
                &[
                    &self.namespace,
                    &canary.component,
                    &canary.digest,
                    &canary.stable,
                    &policy,
                    &share,
                    &now,
                    &by_host,
                ],
            )
            .await
            .map_err(|err| self.failed("record the canary", err))?;
        if inserted == 0 {
            let by: Option<String> = tx
                .query_opt(
                    "SELECT updated_by FROM mosaic_canaries WHERE namespace = $1 AND component = $2",
                    &[&self.namespace, &canary.component],
                )
                .await
                .map_err(|err| self.failed("read the canary", err))?
                .map(|row| row.get(0));
            return Err(StoreError(format!(
                "another canary of `{}` is in progress in the cluster (through host {}); promote or roll it back first",
                canary.component,
                by.unwrap_or_default()
            )));
        }
        self.record_rollout(
            &tx,
            canary.component,
            canary.digest,
            Some(canary.stable),
            "canary",
            None,
            by_host,
        )
        .await?;
        self.notify_and_commit(tx).await
    }

    /// Raises the share of the canary `digest` from step `from_step`; false when the store's
    /// canary is another one or already past that step (another host raised it).
    pub async fn step_canary(
        &self,
        component: &str,
        digest: &str,
        from_step: u32,
        share_bp: u32,
        by_host: &str,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|err| self.failed("begin", err))?;
        let (from, share) = (
            i32::try_from(from_step).unwrap_or(i32::MAX),
            i32::try_from(share_bp).unwrap_or(0),
        );
        let updated = tx
            .execute(
                "UPDATE mosaic_canaries SET share_bp = $5, step = step + 1, updated_at_ms = $6, updated_by = $7 \
                 WHERE namespace = $1 AND component = $2 AND digest = $3 AND step = $4",
                &[&self.namespace, &component, &digest, &from, &share, &now_ms(), &by_host],
            )
            .await
            .map_err(|err| self.failed("raise the canary's share", err))?;
        if updated == 0 {
            return Ok(false);
        }
        self.record_rollout(&tx, component, digest, None, "canary_step", None, by_host)
            .await?;
        self.notify_and_commit(tx).await.map(|()| true)
    }

    /// Ends the canary `digest` on every host without promoting it (`action` is
    /// `canary_rollback` or `auto_rollback`, `reason` why); false when it is not the store's.
    pub async fn end_canary(
        &self,
        component: &str,
        digest: &str,
        action: &str,
        reason: Option<&str>,
        by_host: &str,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|err| self.failed("begin", err))?;
        let Some(stable) = self.take_canary(&tx, component, digest).await? else {
            return Ok(false);
        };
        self.record_rollout(&tx, component, &stable, Some(digest), action, reason, by_host)
            .await?;
        self.notify_and_commit(tx).await.map(|()| true)
    }

    /// Makes the canary `digest` the desired version of every host (the stable one stays the
    /// way back); false when it is not the store's canary.
    pub async fn promote_canary(&self, component: &str, digest: &str, by_host: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|err| self.failed("begin", err))?;
        let Some(stable) = self.take_canary(&tx, component, digest).await? else {
            return Ok(false);
        };
        tx.execute(
            "INSERT INTO mosaic_desired (namespace, component, digest, route, action, generation, updated_at_ms, updated_by) \
             VALUES ($1, $2, $3, NULL, 'promote', 1, $4, $5) \
             ON CONFLICT (namespace, component) DO UPDATE SET digest = EXCLUDED.digest, action = EXCLUDED.action, \
             generation = mosaic_desired.generation + 1, updated_at_ms = EXCLUDED.updated_at_ms, \
             updated_by = EXCLUDED.updated_by",
            &[&self.namespace, &component, &digest, &now, &by_host],
        )
        .await
        .map_err(|err| self.failed("write the desired version", err))?;
        self.record_rollout(&tx, component, digest, Some(&stable), "promote", None, by_host)
            .await?;
        self.notify_and_commit(tx).await.map(|()| true)
    }

    /// How the cluster's last canary `digest` of `component` ended, if it was rolled back:
    /// (action, reason, host).
    pub async fn canary_end(
        &self,
        component: &str,
        digest: &str,
    ) -> Result<Option<(String, Option<String>, String)>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT action, reason, by_host FROM mosaic_rollouts WHERE namespace = $1 AND component = $2 \
                 AND previous = $3 AND action IN ('canary_rollback', 'auto_rollback') ORDER BY id DESC LIMIT 1",
                &[&self.namespace, &component, &digest],
            )
            .await
            .map_err(|err| self.failed("read the rollout log", err))?;
        Ok(row.map(|row| (row.get(0), row.get(1), row.get(2))))
    }

    /// Records this host's (stable, canary) counts of the canary `digest` and returns the sum
    /// of the other hosts' that reported since `since_ms`.
    pub async fn exchange_canary_counts(
        &self,
        component: &str,
        digest: &str,
        host: &str,
        (stable, canary): (Counts, Counts),
        since_ms: i64,
    ) -> Result<(Counts, Counts), StoreError> {
        let client = self.client().await?;
        let number = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        client
            .execute(
                "INSERT INTO mosaic_canary_counts (namespace, component, digest, host, stable_requests, stable_errors, \
                 canary_requests, canary_errors, reported_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (namespace, component, digest, host) DO UPDATE SET \
                 stable_requests = EXCLUDED.stable_requests, stable_errors = EXCLUDED.stable_errors, \
                 canary_requests = EXCLUDED.canary_requests, canary_errors = EXCLUDED.canary_errors, \
                 reported_at_ms = EXCLUDED.reported_at_ms",
                &[
                    &self.namespace,
                    &component,
                    &digest,
                    &host,
                    &number(stable.requests),
                    &number(stable.errors),
                    &number(canary.requests),
                    &number(canary.errors),
                    &now_ms(),
                ],
            )
            .await
            .map_err(|err| self.failed("record this host's canary counts", err))?;
        let row = client
            .query_one(
                "SELECT COALESCE(SUM(stable_requests), 0)::BIGINT, COALESCE(SUM(stable_errors), 0)::BIGINT, \
                 COALESCE(SUM(canary_requests), 0)::BIGINT, COALESCE(SUM(canary_errors), 0)::BIGINT \
                 FROM mosaic_canary_counts WHERE namespace = $1 AND component = $2 AND digest = $3 \
                 AND host <> $4 AND reported_at_ms >= $5",
                &[&self.namespace, &component, &digest, &host, &since_ms],
            )
            .await
            .map_err(|err| self.failed("read the other hosts' canary counts", err))?;
        let count = |index: usize| u64::try_from(row.get::<_, i64>(index)).unwrap_or(0);
        Ok((
            Counts {
                requests: count(0),
                errors: count(1),
            },
            Counts {
                requests: count(2),
                errors: count(3),
            },
        ))
    }

    /// Stores the source of `digest` (once: sources are kept by digest).
    async fn store_source(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        digest: &str,
        source: &[u8],
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO mosaic_sources (digest, source, stored_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (digest) DO NOTHING",
            &[&digest, &source, &now_ms()],
        )
        .await
        .map_err(|err| self.failed("store a component source", err))?;
        Ok(())
    }

    /// The desired version of `component`, locked until the transaction ends.
    async fn desired_for_update(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        component: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(tx
            .query_opt(
                "SELECT digest FROM mosaic_desired WHERE namespace = $1 AND component = $2 FOR UPDATE",
                &[&self.namespace, &component],
            )
            .await
            .map_err(|err| self.failed("read the desired version", err))?
            .map(|row| row.get(0)))
    }

    /// Removes the canary `digest` of `component` and its counts; its stable version, if it
    /// was the store's canary.
    async fn take_canary(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        component: &str,
        digest: &str,
    ) -> Result<Option<String>, StoreError> {
        let stable = tx
            .query_opt(
                "DELETE FROM mosaic_canaries WHERE namespace = $1 AND component = $2 AND digest = $3 RETURNING stable",
                &[&self.namespace, &component, &digest],
            )
            .await
            .map_err(|err| self.failed("end the canary", err))?
            .map(|row| row.get(0));
        tx.execute(
            "DELETE FROM mosaic_canary_counts WHERE namespace = $1 AND component = $2 AND digest = $3",
            &[&self.namespace, &component, &digest],
        )
        .await
        .map_err(|err| self.failed("forget the canary's counts", err))?;
        Ok(stable)
    }

    #[allow(clippy::too_many_arguments)]
    async fn record_rollout(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        component: &str,
        digest: &str,
        previous: Option<&str>,
        action: &str,
        reason: Option<&str>,
        by_host: &str,
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO mosaic_rollouts (namespace, component, digest, previous, action, at_ms, by_host, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &self.namespace,
                &component,
                &digest,
                &previous,
                &action,
                &now_ms(),
                &by_host,
                &reason,
            ],
        )
        .await
        .map_err(|err| self.failed("record the rollout", err))?;
        Ok(())
    }

    async fn notify_and_commit(&self, tx: deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.namespace])
            .await
            .map_err(|err| self.failed("notify the hosts", err))?;
        tx.commit().await.map_err(|err| self.failed("commit the change", err))
    }
}

fn now_ms() -> i64 {
    crate::clock::now_unix_ms_i64()
}
