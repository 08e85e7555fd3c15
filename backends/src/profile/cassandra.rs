//! The Cassandra (or ScyllaDB) profile store, on the scylla driver.
//!
//! One row per assignment: `PRIMARY KEY ((user_id), experiment_id)` → `variation_id`. A save
//! writes only the rows of the experiments it carries (one unlogged batch, all in one partition),
//! so concurrent saves for one user never overwrite each other; there is no blob to race on.
//! A lookup reads the user's partition. With `ttl` set, rows are written `USING TTL` and each
//! assignment expires that long after it was last saved.

use super::{ExperimentBucket, ProfileStore, StoredProfile};
use crate::BackendError;
use scylla::client::execution_profile::{ExecutionProfile, ExecutionProfileHandle};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, NewSessionError, PrepareError, RequestAttemptError};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

const BACKEND: &str = "cassandra";

/// Default contact point.
pub const DEFAULT_CONTACT_POINT: &str = "127.0.0.1:9042";
/// Default keyspace.
pub const DEFAULT_KEYSPACE: &str = "bucketd";
/// Default table.
pub const DEFAULT_TABLE: &str = "user_profiles";
/// Default consistency of reads and writes.
pub const DEFAULT_CONSISTENCY: &str = "LOCAL_QUORUM";
/// Default bound on one lookup or save (client side, retries included).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// Default bound on connecting, creating the schema and preparing statements.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default replication of a keyspace created by `create_schema`.
pub const DEFAULT_REPLICATION: &str = "{'class': 'SimpleStrategy', 'replication_factor': 1}";
/// Cassandra's largest TTL (20 years), in seconds.
const MAX_TTL_SECS: u64 = 630_720_000;

/// Settings of the Cassandra store (`type = "cassandra"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CassandraConfig {
    /// `host:port` of nodes to discover the cluster from.
    #[serde(default = "default_contact_points")]
    pub contact_points: Vec<String>,
    /// Keyspace of the profile table.
    #[serde(default = "default_keyspace")]
    pub keyspace: String,
    /// Profile table.
    #[serde(default = "default_table")]
    pub table: String,
    /// Datacenter whose nodes are preferred; any if unset.
    #[serde(default)]
    pub local_datacenter: Option<String>,
    /// Consistency of reads and writes: ONE, TWO, THREE, QUORUM, ALL, LOCAL_QUORUM,
    /// EACH_QUORUM, LOCAL_ONE or ANY (writes only).
    #[serde(default = "default_consistency")]
    pub consistency: String,
    /// Expiry of an assignment after its last save (whole seconds, at least 1s); none by default.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Bound on one lookup or save.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Bound on connecting, schema creation and statement preparation at start.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Create the keyspace and table at connect if they do not exist.
    #[serde(default = "default_true")]
    pub create_schema: bool,
    /// CQL replication map of a keyspace created by `create_schema`.
    #[serde(default = "default_replication")]
    pub replication: String,
}

fn default_contact_points() -> Vec<String> {
    vec![DEFAULT_CONTACT_POINT.to_owned()]
}
fn default_keyspace() -> String {
    DEFAULT_KEYSPACE.to_owned()
}
fn default_table() -> String {
    DEFAULT_TABLE.to_owned()
}
fn default_consistency() -> String {
    DEFAULT_CONSISTENCY.to_owned()
}
fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}
fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_true() -> bool {
    true
}
fn default_replication() -> String {
    DEFAULT_REPLICATION.to_owned()
}

impl Default for CassandraConfig {
    fn default() -> Self {
        Self {
            contact_points: default_contact_points(),
            keyspace: default_keyspace(),
            table: default_table(),
            local_datacenter: None,
            consistency: default_consistency(),
            ttl: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            create_schema: true,
            replication: default_replication(),
        }
    }
}

impl CassandraConfig {
    /// Checks the settings without connecting.
    pub fn validate(&self) -> Result<(), BackendError> {
        if self.contact_points.is_empty() {
            return Err(BackendError::fatal(BACKEND, "contact_points is empty"));
        }
        check_identifier("keyspace", &self.keyspace)?;
        check_identifier("table", &self.table)?;
        parse_consistency(&self.consistency)?;
        if let Some(ttl) = self.ttl {
            if !(1..=MAX_TTL_SECS).contains(&ttl.as_secs()) {
                return Err(BackendError::fatal(
                    BACKEND,
                    format!("ttl must be between 1s and {MAX_TTL_SECS}s"),
                ));
            }
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(BackendError::fatal(BACKEND, "timeouts must be positive"));
        }
        let replication = self.replication.trim();
        if !(replication.starts_with('{') && replication.ends_with('}'))
            || replication.contains(';')
        {
            return Err(BackendError::fatal(
                BACKEND,
                "replication must be a CQL map `{...}`",
            ));
        }
        Ok(())
    }
}

/// Keyspace and table names go into CQL text: only unquoted Cassandra identifiers are allowed.
fn check_identifier(what: &str, name: &str) -> Result<(), BackendError> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 48;
    if valid {
        Ok(())
    } else {
        Err(BackendError::fatal(
            BACKEND,
            format!("{what} `{name}` must be a letter then up to 47 letters, digits or `_`"),
        ))
    }
}

fn parse_consistency(name: &str) -> Result<Consistency, BackendError> {
    Ok(match name.to_ascii_uppercase().as_str() {
        "ANY" => Consistency::Any,
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        _ => {
            return Err(BackendError::fatal(
                BACKEND,
                format!(
                    "unknown consistency `{name}` (ONE, TWO, THREE, QUORUM, ALL, LOCAL_QUORUM, \
                     EACH_QUORUM, LOCAL_ONE, ANY)"
                ),
            ))
        }
    })
}

/// A profile store in Cassandra.
pub struct CassandraStore {
    session: Session,
    insert: PreparedStatement,
    select: PreparedStatement,
    /// Deletes a user's partition (before a `replace` writes the new entries).
    delete: PreparedStatement,
    /// Profile of lookups and saves (consistency, timeout, datacenter preference).
    profile: ExecutionProfileHandle,
    timeout: Duration,
}

impl std::fmt::Debug for CassandraStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CassandraStore")
            .field("insert", &self.insert.get_statement())
            .field("select", &self.select.get_statement())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl CassandraStore {
    /// Connects, creates the schema when configured to, and prepares the statements.
    ///
    /// Bad settings and schema errors are `Fatal`; an unreachable cluster is `Unavailable` (the
    /// caller may retry).
    pub async fn connect(config: &CassandraConfig) -> Result<Self, BackendError> {
        config.validate()?;
        let consistency = parse_consistency(&config.consistency)?;
        let profile = |timeout: Duration| {
            let mut policy = DefaultPolicy::builder();
            if let Some(dc) = &config.local_datacenter {
                policy = policy
                    .prefer_datacenter(dc.clone())
                    .permit_dc_failover(false);
            }
            ExecutionProfile::builder()
                .consistency(consistency)
                .request_timeout(Some(timeout))
                .load_balancing_policy(policy.build())
                .build()
                .into_handle()
        };
        let connecting = async {
            let session = SessionBuilder::new()
                .known_nodes(&config.contact_points)
                .connection_timeout(config.connect_timeout)
                .default_execution_profile_handle(profile(config.connect_timeout))
                .build()
                .await
                .map_err(session_error)?;
            if config.create_schema {
                create_schema(&session, config).await?;
            }
            let request = profile(config.timeout);
            let ks_table = format!("{}.{}", config.keyspace, config.table);
            let insert = prepare(&session, &request, &insert_cql(&ks_table, config.ttl)).await?;
            let select = prepare(
                &session,
                &request,
                &format!("SELECT experiment_id, variation_id FROM {ks_table} WHERE user_id = ?"),
            )
            .await?;
            let delete = prepare(
                &session,
                &request,
                &format!("DELETE FROM {ks_table} WHERE user_id = ?"),
            )
            .await?;
            Ok(Self {
                session,
                insert,
                select,
                delete,
                profile: request,
                timeout: config.timeout,
            })
        };
        tokio::time::timeout(config.connect_timeout, connecting)
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::Timeout {
                    backend: BACKEND,
                    millis: millis(config.connect_timeout),
                })
            })
    }

    /// The CQL text of the statement a save runs once per saved experiment (e.g. to check the
    /// TTL clause, which the test server accepts but does not enforce).
    pub fn save_statement(&self) -> &str {
        self.insert.get_statement()
    }
}

fn insert_cql(ks_table: &str, ttl: Option<Duration>) -> String {
    // The TTL is fixed per store, so it is part of the statement text rather than bound: one
    // prepared statement, and nothing to get wrong per call.
    let using = ttl
        .map(|ttl| format!(" USING TTL {}", ttl.as_secs()))
        .unwrap_or_default();
    format!("INSERT INTO {ks_table} (user_id, experiment_id, variation_id) VALUES (?, ?, ?){using}")
}

async fn create_schema(session: &Session, config: &CassandraConfig) -> Result<(), BackendError> {
    let keyspace = format!(
        "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {}",
        config.keyspace,
        config.replication.trim()
    );
    let table = format!(
        "CREATE TABLE IF NOT EXISTS {}.{} (user_id text, experiment_id text, variation_id text, \
         PRIMARY KEY ((user_id), experiment_id))",
        config.keyspace, config.table
    );
    for ddl in [keyspace, table] {
        session.query_unpaged(ddl, &[]).await.map_err(|e| {
            let e = execution_error(e);
            match e {
                BackendError::Fatal { message, .. } => {
                    BackendError::fatal(BACKEND, format!("creating the schema: {message}"))
                }
                other => other,
            }
        })?;
    }
    Ok(())
}

async fn prepare(
    session: &Session,
    profile: &ExecutionProfileHandle,
    cql: &str,
) -> Result<PreparedStatement, BackendError> {
    let mut statement = session.prepare(cql).await.map_err(prepare_error)?;
    statement.set_execution_profile_handle(Some(profile.clone()));
    statement.set_is_idempotent(true);
    Ok(statement)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn session_error(e: NewSessionError) -> BackendError {
    match e {
        NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_) => {
            BackendError::fatal(BACKEND, e)
        }
        NewSessionError::UseKeyspaceError(_) => BackendError::fatal(BACKEND, e),
        // Unresolvable hosts, unreachable nodes, failed metadata reads: may pass.
        other => BackendError::unavailable(BACKEND, other),
    }
}

/// Whether a server error is about the request itself (retrying cannot help).
fn is_fatal_db_error(e: &DbError) -> bool {
    matches!(
        e,
        DbError::SyntaxError
            | DbError::Invalid
            | DbError::AlreadyExists { .. }
            | DbError::FunctionFailure { .. }
            | DbError::AuthenticationError
            | DbError::Unauthorized
            | DbError::ConfigError
            | DbError::ProtocolError
    )
}

fn attempt_error(e: &RequestAttemptError) -> bool {
    match e {
        RequestAttemptError::DbError(db, _) => is_fatal_db_error(db),
        RequestAttemptError::SerializationError(_)
        | RequestAttemptError::CqlRequestSerialization(_) => true,
        _ => false,
    }
}

fn prepare_error(e: PrepareError) -> BackendError {
    let fatal = match &e {
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_error(first_attempt),
        _ => false,
    };
    if fatal {
        BackendError::fatal(BACKEND, format!("preparing a statement: {e}"))
    } else {
        BackendError::unavailable(BACKEND, e)
    }
}

fn execution_error(e: ExecutionError) -> BackendError {
    match &e {
        ExecutionError::RequestTimeout(d) => BackendError::Timeout {
            backend: BACKEND,
            millis: millis(*d),
        },
        ExecutionError::BadQuery(_) => BackendError::fatal(BACKEND, e),
        ExecutionError::LastAttemptError(attempt) if attempt_error(attempt) => {
            BackendError::fatal(BACKEND, e)
        }
        ExecutionError::PrepareError(PrepareError::AllAttemptsFailed { first_attempt })
            if attempt_error(first_attempt) =>
        {
            BackendError::fatal(BACKEND, e)
        }
        _ => BackendError::unavailable(BACKEND, e),
    }
}

#[async_trait::async_trait]
impl ProfileStore for CassandraStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn lookup(&self, user_id: &str) -> Result<Option<StoredProfile>, BackendError> {
        if user_id.is_empty() {
            return Ok(None); // Cassandra rejects empty partition keys; nobody is stored there.
        }
        let result = self
            .session
            .execute_unpaged(&self.select, (user_id,))
            .await
            .map_err(execution_error)?;
        let bad = |e: &dyn std::fmt::Display| {
            BackendError::fatal(BACKEND, format!("unreadable profile rows: {e}"))
        };
        let rows = result.into_rows_result().map_err(|e| bad(&e))?;
        let mut experiment_bucket_map = BTreeMap::new();
        for row in rows
            .rows::<(String, Option<String>)>()
            .map_err(|e| bad(&e))?
        {
            let (experiment_id, variation_id) = row.map_err(|e| bad(&e))?;
            if let Some(variation_id) = variation_id {
                experiment_bucket_map.insert(experiment_id, ExperimentBucket { variation_id });
            }
        }
        Ok((!experiment_bucket_map.is_empty()).then(|| StoredProfile {
            user_id: user_id.to_owned(),
            experiment_bucket_map,
        }))
    }

    async fn save(&self, profile: &StoredProfile) -> Result<(), BackendError> {
        if profile.user_id.is_empty() || profile.experiment_bucket_map.is_empty() {
            return Ok(());
        }
        let user = profile.user_id.as_str();
        let rows: Vec<(&str, &str, &str)> = profile
            .experiment_bucket_map
            .iter()
            .map(|(experiment, bucket)| (user, experiment.as_str(), bucket.variation_id.as_str()))
            .collect();
        if let [row] = rows.as_slice() {
            self.session
                .execute_unpaged(&self.insert, row)
                .await
                .map_err(execution_error)?;
            return Ok(());
        }
        // All rows share the partition: an unlogged batch is applied atomically and isolated.
        let mut batch = Batch::new(BatchType::Unlogged);
        for _ in &rows {
            batch.append_statement(self.insert.clone());
        }
        batch.set_execution_profile_handle(Some(self.profile.clone()));
        batch.set_is_idempotent(true);
        self.session
            .batch(&batch, rows)
            .await
            .map_err(execution_error)?;
        Ok(())
    }

    async fn replace(&self, profile: &StoredProfile) -> Result<(), BackendError> {
        if profile.user_id.is_empty() {
            return Ok(());
        }
        // The partition goes first, then the new rows are written (with later timestamps, so
        // the deletion does not shadow them).
        self.session
            .execute_unpaged(&self.delete, (profile.user_id.as_str(),))
            .await
            .map_err(execution_error)?;
        self.save(profile).await
    }

    async fn health(&self) -> Result<(), BackendError> {
        self.lookup("bucketd-health-check").await.map(drop)
    }
}
