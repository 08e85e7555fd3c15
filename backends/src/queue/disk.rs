//! The embedded event queue: one redb file under the daemon's state directory.
//!
//! Why redb: it is a pure-Rust, single-file, copy-on-write B-tree with ACID transactions, a
//! stable file format and an active maintainer. A commit with the default durability is fsynced
//! before it returns, so a publish that returned survives `kill -9` and power loss. A queue is
//! a delete-heavy workload: a B-tree frees the pages of deleted records for reuse, where an LSM
//! tree (fjall) keeps tombstones that every scan from the head must skip until compaction.
//!
//! Layout: table `records` maps a sequence number (u64, assigned in publish order) to the
//! encoded record; table `meta` keeps the byte count that bounds the queue. A publish is one
//! write transaction, an ack is one write transaction. Which records are in flight (received,
//! not yet acked) is kept in memory only, so a restart redelivers everything not acked.

use crate::queue::{AckToken, Delivery, EventQueue, Record, QUEUE_FULL};
use crate::BackendError;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Deserialize;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

const BACKEND: &str = "disk";

/// Default bound of the queue: 1 GiB of record bytes.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// File name of the database inside [`DiskConfig::path`].
pub const FILE_NAME: &str = "queue.redb";

/// Bytes counted for a stored record: its encoding (`4 + key + value`) and its 8-byte
/// sequence number.
fn accounted(encoded_len: usize) -> u64 {
    encoded_len as u64 + 8
}

/// redb's page cache. Records are read about once, so a small cache is enough.
const CACHE_BYTES: usize = 32 << 20;

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_BYTES: &str = "bytes";

fn default_max_bytes() -> u64 {
    DEFAULT_MAX_BYTES
}

/// Settings of the disk queue (`type = "disk"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Directory holding the queue file (the daemon passes `<state_dir>/events`); created if
    /// missing.
    pub path: PathBuf,
    /// Bound on the queued record bytes (key + value + 12 bytes each). At the bound, `publish`
    /// fails with a [`crate::queue::is_queue_full`] error. The file itself is larger than the
    /// records it holds (B-tree pages, free pages kept for reuse): allow about twice this on
    /// disk.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

impl DiskConfig {
    /// A config for a queue in `path` with the default bound.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// The durable on-disk queue. Cheap to share: clone the `Arc` it is built into.
pub struct DiskQueue {
    shared: Arc<Shared>,
}

struct Shared {
    db: Database,
    max_bytes: u64,
    state: Mutex<State>,
    /// Woken when records become receivable (publish, release).
    ready: Notify,
}

/// What only this process knows: the delivery positions.
#[derive(Debug, Default)]
struct State {
    /// The sequence number the next published record gets.
    next_seq: u64,
    /// Records at or above this sequence number were never received by this process.
    cursor: u64,
    /// Received and neither acked nor released.
    in_flight: HashSet<u64>,
    /// Released: to be received again before anything new.
    released: BTreeSet<u64>,
    /// Records stored.
    count: u64,
}

impl DiskQueue {
    /// Opens (or creates) the queue in `config.path`. Blocks while redb checks the file, which
    /// takes a while only after a crash with a large queue (it repairs the allocator state).
    pub fn open(config: &DiskConfig) -> Result<Self, BackendError> {
        std::fs::create_dir_all(&config.path).map_err(|e| {
            BackendError::fatal(
                BACKEND,
                format!("cannot create {}: {e}", config.path.display()),
            )
        })?;
        let file = config.path.join(FILE_NAME);
        let mut db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            // Lets a later redb 3 open the file without an upgrade step.
            .create_with_file_format_v3(true)
            .create(&file)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => BackendError::fatal(
                    BACKEND,
                    format!(
                        "{} is already open (another bucketd on this state dir?)",
                        file.display()
                    ),
                ),
                e => open_err(&file, e),
            })?;

        let (state, bytes) = load_state(&db)?;
        if state.count == 0 {
            // An empty queue is the cheap moment to give the pages of drained records back to
            // the file system.
            if let Err(e) = db.compact() {
                tracing::warn!(error = %e, path = %file.display(), "disk queue compaction failed");
            }
        }
        tracing::info!(
            path = %file.display(),
            records = state.count,
            bytes,
            max_bytes = config.max_bytes,
            "disk queue opened"
        );
        Ok(Self {
            shared: Arc::new(Shared {
                db,
                max_bytes: config.max_bytes,
                state: Mutex::new(state),
                ready: Notify::new(),
            }),
        })
    }

    /// Runs `f` on the blocking pool: redb does file I/O and fsync.
    async fn blocking<T, F>(&self, f: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T, BackendError> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| BackendError::fatal(BACKEND, format!("blocking task failed: {e}")))?
    }
}

/// Reads the persistent state at open; makes sure both tables exist.
fn load_state(db: &Database) -> Result<(State, u64), BackendError> {
    let txn = db.begin_write().map_err(db_err)?;
    let (state, bytes) = {
        let records = txn.open_table(RECORDS).map_err(db_err)?;
        let mut meta = txn.open_table(META).map_err(db_err)?;
        let count = records.len().map_err(db_err)?;
        let first = records.first().map_err(db_err)?.map(|(k, _)| k.value());
        let last = records.last().map_err(db_err)?.map(|(k, _)| k.value());
        let mut bytes = meta
            .get(META_BYTES)
            .map_err(db_err)?
            .map(|v| v.value())
            .unwrap_or(0);
        if count == 0 && bytes != 0 {
            bytes = 0;
            meta.insert(META_BYTES, 0).map_err(db_err)?;
        }
        let state = State {
            next_seq: last.map_or(0, |s| s + 1),
            cursor: first.unwrap_or(0),
            count,
            ..State::default()
        };
        (state, bytes)
    };
    txn.commit().map_err(db_err)?;
    Ok((state, bytes))
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves positions that are still consistent enough
        // (at worst a record is delivered twice), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One write transaction: all records or none.
    fn publish(&self, encoded: Vec<Vec<u8>>, batch_bytes: u64) -> Result<(), BackendError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let n = encoded.len() as u64;
        // Write transactions are serialised by redb, so reading `next_seq` here and advancing it
        // after the commit hands out sequence numbers in commit order: a reader never sees a
        // record whose predecessor is not committed yet.
        let start = self.state().next_seq;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let used = meta
                .get(META_BYTES)
                .map_err(db_err)?
                .map(|v| v.value())
                .unwrap_or(0);
            if used.saturating_add(batch_bytes) > self.max_bytes {
                return Err(BackendError::fatal(
                    BACKEND,
                    format!(
                        "{QUEUE_FULL}: {used} of {} bytes used, batch of {n} records needs {batch_bytes}",
                        self.max_bytes
                    ),
                ));
            }
            meta.insert(META_BYTES, used + batch_bytes)
                .map_err(db_err)?;
            let mut records = txn.open_table(RECORDS).map_err(db_err)?;
            for (seq, value) in (start..).zip(&encoded) {
                records.insert(seq, value.as_slice()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        let mut st = self.state();
        st.next_seq = start + n;
        st.count += n;
        Ok(())
    }

    /// Takes up to `max` receivable records without waiting: released ones first, then new.
    fn receive_now(&self, max: usize) -> Result<Vec<Delivery>, BackendError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let txn = self.db.begin_read().map_err(db_err)?;
        let records = txn.open_table(RECORDS).map_err(db_err)?;
        // The lock is held across the reads so two concurrent receivers never take the same
        // record; it is a std lock on a blocking thread, never held across an await.
        let mut st = self.state();
        while out.len() < max {
            let Some(seq) = st.released.pop_first() else {
                break;
            };
            // Absent when it was acked after its release: nothing to deliver.
            if let Some(v) = records.get(seq).map_err(db_err)? {
                out.push(delivery(seq, v.value())?);
                st.in_flight.insert(seq);
            }
        }
        if out.len() < max {
            for item in records.range(st.cursor..).map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                let seq = k.value();
                out.push(delivery(seq, v.value())?);
                st.in_flight.insert(seq);
                st.cursor = seq + 1;
                if out.len() == max {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Deletes acked records in one write transaction.
    fn ack(&self, seqs: Vec<u64>) -> Result<(), BackendError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut removed = 0u64;
        {
            let mut records = txn.open_table(RECORDS).map_err(db_err)?;
            let mut freed = 0u64;
            for &seq in &seqs {
                if let Some(v) = records.remove(seq).map_err(db_err)? {
                    freed += accounted(v.value().len());
                    removed += 1;
                }
            }
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let used = meta
                .get(META_BYTES)
                .map_err(db_err)?
                .map(|v| v.value())
                .unwrap_or(0);
            meta.insert(META_BYTES, used.saturating_sub(freed))
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        let mut st = self.state();
        for seq in &seqs {
            st.in_flight.remove(seq);
            st.released.remove(seq);
        }
        st.count = st.count.saturating_sub(removed);
        Ok(())
    }
}

/// `[key length: u32 LE][key][value]`.
fn encode(record: &Record) -> Result<Vec<u8>, BackendError> {
    let key_len = u32::try_from(record.key.len())
        .map_err(|_| BackendError::fatal(BACKEND, "record key longer than 4 GiB"))?;
    let mut out = Vec::with_capacity(4 + record.key.len() + record.value.len());
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(record.key.as_bytes());
    out.extend_from_slice(&record.value);
    Ok(out)
}

fn delivery(seq: u64, bytes: &[u8]) -> Result<Delivery, BackendError> {
    let corrupt = || BackendError::fatal(BACKEND, format!("record {seq} is corrupt"));
    let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(corrupt)?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err(corrupt());
    }
    let (key, value) = rest.split_at(len);
    let key = std::str::from_utf8(key).map_err(|_| corrupt())?;
    Ok(Delivery {
        record: Record {
            key: key.to_owned(),
            value: value.to_vec(),
        },
        token: AckToken(seq.to_string()),
    })
}

fn parse_tokens(tokens: &[AckToken]) -> Result<Vec<u64>, BackendError> {
    tokens
        .iter()
        .map(|t| {
            t.0.parse::<u64>().map_err(|_| {
                BackendError::fatal(BACKEND, format!("not a disk queue token: {:?}", t.0))
            })
        })
        .collect()
}

fn open_err(file: &Path, e: impl Into<redb::Error>) -> BackendError {
    let e = e.into();
    match e {
        redb::Error::Io(_) => {
            BackendError::unavailable(BACKEND, format!("cannot open {}: {e}", file.display()))
        }
        e => BackendError::fatal(BACKEND, format!("cannot open {}: {e}", file.display())),
    }
}

/// I/O errors (a full disk, say) may pass; anything else (corruption, a poisoned database after
/// an earlier I/O error) needs an operator.
fn db_err(e: impl Into<redb::Error>) -> BackendError {
    match e.into() {
        redb::Error::Io(e) => BackendError::unavailable(BACKEND, e),
        e => BackendError::fatal(BACKEND, e),
    }
}

#[async_trait::async_trait]
impl EventQueue for DiskQueue {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn publish(&self, records: &[Record]) -> Result<(), BackendError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut batch_bytes = 0u64;
        let mut encoded = Vec::with_capacity(records.len());
        for r in records {
            let e = encode(r)?;
            batch_bytes += accounted(e.len());
            encoded.push(e);
        }
        self.blocking(move |s| s.publish(encoded, batch_bytes))
            .await?;
        self.shared.ready.notify_waiters();
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BackendError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so a publish between the look and the wait still wakes
            // this receiver.
            let ready = self.shared.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let got = self.blocking(move |s| s.receive_now(max)).await?;
            if !got.is_empty() || max == 0 {
                return Ok(got);
            }
            if tokio::time::timeout_at(deadline, ready).await.is_err() {
                return Ok(got);
            }
        }
    }

    async fn ack(&self, tokens: &[AckToken]) -> Result<(), BackendError> {
        if tokens.is_empty() {
            return Ok(());
        }
        let seqs = parse_tokens(tokens)?;
        self.blocking(move |s| s.ack(seqs)).await
    }

    async fn release(&self, tokens: &[AckToken]) -> Result<(), BackendError> {
        let seqs = parse_tokens(tokens)?;
        {
            let mut st = self.shared.state();
            for seq in seqs {
                // Only what is in flight: releasing twice, or after an ack, changes nothing.
                if st.in_flight.remove(&seq) {
                    st.released.insert(seq);
                }
            }
        }
        self.shared.ready.notify_waiters();
        Ok(())
    }

    async fn depth(&self) -> Result<Option<u64>, BackendError> {
        let st = self.shared.state();
        Ok(Some(st.count.saturating_sub(st.in_flight.len() as u64)))
    }

    async fn health(&self) -> Result<(), BackendError> {
        self.blocking(|s| {
            let txn = s.db.begin_read().map_err(db_err)?;
            txn.open_table(RECORDS).map_err(db_err)?;
            Ok(())
        })
        .await
    }
}
