//! The embedded event queue: one redb file under the daemon's state directory.
//!
//! Why redb: it is a pure-Rust, single-file, copy-on-write B-tree with ACID transactions, a
//! stable file format and an active maintainer. A commit with the default durability is fsynced
//! before it returns, so a publish that returned survives `kill -9` and power loss. A queue is
//! a delete-heavy workload: a B-tree frees the pages of deleted records for reuse, where an LSM
//! tree (fjall) keeps tombstones that every scan from the head must skip until compaction.
//!
//! Layout: table `batches` maps a batch number (u64, in publish order) to every record of one
//! `publish`, packed: `[count: u32 LE] { [key len: u32 LE] [key] [value len: u32 LE] [value] }*`.
//! One B-tree entry per publish, not per record: inserting records one by one rebuilt a leaf
//! page per record and was the largest cost of a request that records an event. Table `acked`
//! keeps, for a batch partly acknowledged, a bitmap of its acked records; a batch whose records
//! are all acked is deleted with its bitmap. Table `meta` keeps the byte count that bounds the
//! queue and the count of unacked records. Publish and ack are one write transaction each.
//! Which records are in flight (received, not yet acked) is kept in memory only, so a restart
//! redelivers everything not acked.
//!
//! Durability: every publish commits with an fsync (a publish that returned survives
//! `kill -9`; the daemon's durable acknowledgement rests on it). An ack commits without one
//! unless [`ACK_SYNC_EVERY`] passed since the last fsync: the next publish's fsync persists it,
//! so acks cost no fsync of their own under load, and a crash at worst redelivers the last
//! second of acked records (duplicates, which carry their uuid; never a loss).
//!
//! A full file system: redb refuses every call after a failed write (`PreviousIo`), so the
//! handle that saw an I/O error is dropped and the next call opens the file again (redb repairs
//! it to its last commit). Until that succeeds, publishes fail at once with
//! [`BackendError::NoSpace`] (the producer's `disk_full`) or `Unavailable`. A reopen reloads the
//! state as a restart does: records not acked are delivered again (duplicates, never a loss).

mod batch;
mod config;
mod state;

pub use config::{DiskConfig, DEFAULT_MAX_BYTES, FILE_NAME};

use crate::queue::{AckToken, Delivery, EventQueue, Record};
use crate::BackendError;
use batch::{batch_len, corrupt, encode_batch, BatchReader};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use state::{Bitmap, OpenBatch, Pos, State};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const BACKEND: &str = "disk";

/// Longest an ack goes without an fsync of its own (see the module docs).
const ACK_SYNC_EVERY: Duration = Duration::from_secs(1);

/// Least time between two reopens after I/O errors: each one repairs the file, so a full disk
/// costs at most a few repairs a second; calls in between fail at once with the last error.
const REOPEN_EVERY: Duration = Duration::from_millis(250);
/// Least time between two logs of a reopen.
const REOPEN_LOG_EVERY: Duration = Duration::from_secs(10);

/// redb's page cache. Records are read about once, so a small cache is enough.
const CACHE_BYTES: usize = 4 << 20;

const BATCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("batches");
const ACKED: TableDefinition<u64, &[u8]> = TableDefinition::new("acked");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_BYTES: &str = "bytes";
const META_UNACKED: &str = "unacked";

/// Bytes counted for a stored batch: its encoding and its 8-byte key.
fn accounted(encoded_len: usize) -> u64 {
    encoded_len as u64 + 8
}

/// The durable on-disk queue. Cheap to share: clone the `Arc` it is built into.
pub struct DiskQueue {
    shared: Arc<Shared>,
}

struct Shared {
    /// The open database; `None` after an I/O error until [`Shared::db`] reopens it.
    db: Mutex<Option<Arc<Database>>>,
    /// When the last handle was dropped for an I/O error, and whether it was a full disk.
    discarded: Mutex<Option<(Instant, bool)>>,
    /// When a reopen was last logged, and how many happened since.
    reopen_log: Mutex<(Option<Instant>, u64)>,
    file: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    /// Serialises acks (see [`Shared::ack`]).
    acking: Mutex<()>,
    /// When a commit last fsynced.
    last_sync: Mutex<Instant>,
    /// An ack committed since then without an fsync.
    unsynced: std::sync::atomic::AtomicBool,
    /// Woken when records become receivable (publish, release).
    ready: Notify,
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
        let (mut db, state, bytes) = match open_and_load(&file) {
            Ok(opened) => opened,
            Err(Opening::Unreadable(reason)) => {
                // A file that is not a queue any more (overwritten, truncated past what redb
                // repairs) must not keep the daemon from starting: it is kept beside the new
                // one for an operator, and the queue starts empty.
                let aside = set_aside(&file)?;
                tracing::error!(
                    path = %file.display(),
                    set_aside = %aside.display(),
                    reason = %reason,
                    "disk queue file unreadable: set aside, starting with an empty queue \
                     (its events are not delivered; see the file kept)"
                );
                open_and_load(&file).map_err(Opening::into_error)?
            }
            Err(e) => return Err(e.into_error()),
        };
        if state.unacked == 0 {
            // Nothing queued: give the space of a past backlog back to the file system.
            if let Err(e) = db.compact() {
                tracing::warn!(error = %e, path = %file.display(), "disk queue compaction failed");
            }
        }
        tracing::info!(
            path = %file.display(),
            records = state.unacked,
            bytes,
            max_bytes = config.max_bytes,
            "disk queue opened"
        );
        Ok(Self {
            shared: Arc::new(Shared {
                db: Mutex::new(Some(Arc::new(db))),
                discarded: Mutex::new(None),
                reopen_log: Mutex::new((None, 0)),
                file,
                max_bytes: config.max_bytes,
                state: Mutex::new(state),
                acking: Mutex::new(()),
                last_sync: Mutex::new(Instant::now()),
                unsynced: std::sync::atomic::AtomicBool::new(false),
                ready: Notify::new(),
            }),
        })
    }

    /// Runs `f` on the blocking pool (redb calls block on disk I/O and fsync).
    async fn blocking<T, F>(&self, f: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Shared, &Database) -> Result<T, BackendError> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let db = shared.db()?;
            let result = f(&shared, &db);
            match result {
                // An I/O error: redb refuses everything after one, so reopen next time.
                Err(BackendError::Unavailable { .. }) => shared.discard(&db, false),
                Err(BackendError::NoSpace { .. }) => shared.discard(&db, true),
                _ => {}
            }
            result
        })
        .await
        .map_err(|e| BackendError::fatal(BACKEND, format!("blocking task failed: {e}")))?
    }
}

fn meta_get(meta: &redb::Table<&str, u64>, key: &str) -> Result<Option<u64>, BackendError> {
    Ok(meta.get(key).map_err(db_err)?.map(|v| v.value()))
}

/// Reads the counters and positions back.
fn load_state(db: &Database) -> Result<(State, u64), BackendError> {
    let txn = db.begin_write().map_err(db_err)?;
    let (state, bytes) = {
        let batches = txn.open_table(BATCHES).map_err(db_err)?;
        let acked = txn.open_table(ACKED).map_err(db_err)?;
        let mut meta = txn.open_table(META).map_err(db_err)?;
        let first = batches.first().map_err(db_err)?.map(|(k, _)| k.value());
        let last = batches.last().map_err(db_err)?.map(|(k, _)| k.value());
        let (mut bytes, unacked) =
            match (meta_get(&meta, META_BYTES)?, meta_get(&meta, META_UNACKED)?) {
                (Some(b), Some(u)) => (b, u),
                // Counters missing (a file written before they were kept): count once.
                _ => recount(&batches, &acked)?,
            };
        let mut unacked = unacked;
        if first.is_none() {
            bytes = 0;
            unacked = 0;
        }
        meta.insert(META_BYTES, bytes).map_err(db_err)?;
        meta.insert(META_UNACKED, unacked).map_err(db_err)?;
        let state = State {
            next_batch: last.map_or(0, |b| b + 1),
            cursor: (first.unwrap_or(0), 0),
            unacked,
            ..State::default()
        };
        (state, bytes)
    };
    txn.commit().map_err(db_err)?;
    Ok((state, bytes))
}

/// Bytes and unacked records of every stored batch.
fn recount(
    batches: &redb::Table<u64, &[u8]>,
    acked: &redb::Table<u64, &[u8]>,
) -> Result<(u64, u64), BackendError> {
    let (mut bytes, mut unacked) = (0u64, 0u64);
    for item in batches.iter().map_err(db_err)? {
        let (k, v) = item.map_err(db_err)?;
        let blob = v.value();
        let len = batch_len(k.value(), blob)?;
        let done = match acked.get(k.value()).map_err(db_err)? {
            Some(bits) => Bitmap::from_bytes(len, bits.value()).set,
            None => 0,
        };
        bytes += accounted(blob.len());
        unacked += u64::from(len - done);
    }
    Ok((bytes, unacked))
}

fn delivery(pos: Pos, key: &[u8], value: &[u8]) -> Result<Delivery, BackendError> {
    let key = std::str::from_utf8(key).map_err(|_| corrupt(pos.0))?;
    Ok(Delivery {
        record: Record {
            key: key.to_owned(),
            value: value.to_vec(),
        },
        token: AckToken::Disk {
            batch: pos.0,
            index: pos.1,
        },
    })
}

impl Shared {
    /// The open database, opened again first if an I/O error made it unusable.
    fn db(&self) -> Result<Arc<Database>, BackendError> {
        let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = slot.as_ref() {
            return Ok(Arc::clone(db));
        }
        let discarded = *self.discarded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, no_space)) = discarded {
            if at.elapsed() < REOPEN_EVERY {
                let message = "the queue file is reopened after an I/O error";
                return Err(if no_space {
                    BackendError::NoSpace {
                        backend: BACKEND,
                        message: message.into(),
                    }
                } else {
                    BackendError::unavailable(BACKEND, message)
                });
            }
        }
        let opened = open_and_load(&self.file).map_err(|e| match e.into_error() {
            e @ BackendError::NoSpace { .. } => e,
            // Still held by a call that has not seen the error yet, or not repairable now:
            // try again on the next call.
            e => BackendError::unavailable(BACKEND, e),
        });
        let (db, state, bytes) = match opened {
            Ok(o) => o,
            Err(e) => {
                let no_space = matches!(e, BackendError::NoSpace { .. });
                *self.discarded.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), no_space));
                return Err(e);
            }
        };
        {
            let mut log = self.reopen_log.lock().unwrap_or_else(|p| p.into_inner());
            log.1 += 1;
            if log.0.is_none_or(|at| at.elapsed() >= REOPEN_LOG_EVERY) {
                tracing::warn!(
                    path = %self.file.display(),
                    records = state.unacked,
                    bytes,
                    reopens = log.1,
                    "disk queue reopened after an I/O error (a full disk?); records not acked \
                     are delivered again (logged at most every 10s)"
                );
                *log = (Some(Instant::now()), 0);
            }
        }
        *self.state() = state;
        let db = Arc::new(db);
        *slot = Some(Arc::clone(&db));
        self.ready.notify_waiters();
        Ok(db)
    }

    /// Drops the handle `db` (unless it was replaced already) so a later call reopens.
    fn discard(&self, db: &Arc<Database>, no_space: bool) {
        let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if slot
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, db))
        {
            *slot = None;
            *self.discarded.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((Instant::now(), no_space));
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock still holds consistent data: every update is a few plain assignments.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn synced(&self) {
        self.unsynced
            .store(false, std::sync::atomic::Ordering::Release);
        *self.last_sync.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn since_sync(&self) -> Duration {
        self.last_sync
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    fn publish(&self, db: &Database, blob: Vec<u8>, count: u64) -> Result<(), BackendError> {
        let batch_bytes = accounted(blob.len());
        let txn = db.begin_write().map_err(db_err)?;
        let batch = self.state().next_batch;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let used = meta_get(&meta, META_BYTES)?.unwrap_or(0);
            if used.saturating_add(batch_bytes) > self.max_bytes {
                return Err(BackendError::Full {
                    backend: BACKEND,
                    message: format!(
                        "{used} of {} bytes used, batch of {count} records needs {batch_bytes}",
                        self.max_bytes
                    ),
                });
            }
            let unacked = meta_get(&meta, META_UNACKED)?.unwrap_or(0);
            meta.insert(META_BYTES, used + batch_bytes)
                .map_err(db_err)?;
            meta.insert(META_UNACKED, unacked + count).map_err(db_err)?;
            let mut batches = txn.open_table(BATCHES).map_err(db_err)?;
            batches.insert(batch, blob.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        self.synced();
        let mut st = self.state();
        st.next_batch = batch + 1;
        st.unacked += count;
        Ok(())
    }

    /// Registers a batch read for the first time (with what a past run acked of it).
    fn open_batch(
        st: &mut State,
        acked: &redb::ReadOnlyTable<u64, &[u8]>,
        batch: u64,
        blob: &[u8],
    ) -> Result<(), BackendError> {
        if st.open.contains_key(&batch) {
            return Ok(());
        }
        let len = batch_len(batch, blob)?;
        let bits = match acked.get(batch).map_err(db_err)? {
            Some(v) => Bitmap::from_bytes(len, v.value()),
            None => Bitmap::new(len),
        };
        st.open.insert(
            batch,
            OpenBatch {
                len,
                bytes: accounted(blob.len()),
                acked: bits,
            },
        );
        Ok(())
    }

    fn receive_now(&self, db: &Database, max: usize) -> Result<Vec<Delivery>, BackendError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let txn = db.begin_read().map_err(db_err)?;
        let batches = txn.open_table(BATCHES).map_err(db_err)?;
        let acked = txn.open_table(ACKED).map_err(db_err)?;
        let mut st = self.state();
        // Released records first, in order; each batch is read and walked once for all of its
        // released records.
        while out.len() < max {
            let Some(&(batch, _)) = st.released.first() else {
                break;
            };
            let wanted: Vec<u32> = st
                .released
                .range((batch, 0)..=(batch, u32::MAX))
                .take(max - out.len())
                .map(|&(_, i)| i)
                .collect();
            for &i in &wanted {
                st.released.remove(&(batch, i));
            }
            let Some(v) = batches.get(batch).map_err(db_err)? else {
                continue;
            };
            let mut reader = BatchReader::new(batch, v.value())?;
            let mut wanted = wanted.into_iter().peekable();
            while let Some((i, key, value)) = reader.next_record()? {
                if wanted.peek() == Some(&i) {
                    wanted.next();
                    out.push(delivery((batch, i), key, value)?);
                    st.in_flight.insert((batch, i));
                }
                if wanted.peek().is_none() {
                    break;
                }
            }
        }
        // Then what this process never handed out, from the cursor on.
        while out.len() < max {
            let (batch, start) = st.cursor;
            let Some(item) = batches.range(batch..).map_err(db_err)?.next() else {
                break;
            };
            let (k, v) = item.map_err(db_err)?;
            let (batch, start) = if k.value() == batch {
                (batch, start)
            } else {
                (k.value(), 0)
            };
            let blob = v.value();
            Self::open_batch(&mut st, &acked, batch, blob)?;
            let mut reader = BatchReader::new(batch, blob)?;
            let mut next = (batch + 1, 0);
            while let Some((i, key, value)) = reader.next_record()? {
                if i < start {
                    continue;
                }
                if out.len() == max {
                    next = (batch, i);
                    break;
                }
                let done = st.open.get(&batch).is_some_and(|o| o.acked.contains(i));
                if !done {
                    out.push(delivery((batch, i), key, value)?);
                    st.in_flight.insert((batch, i));
                }
            }
            st.cursor = next;
        }
        Ok(out)
    }

    fn ack(&self, db: &Database, positions: Vec<Pos>) -> Result<(), BackendError> {
        // One ack at a time, from reading the bitmaps to applying them after the commit, so
        // concurrent acks of the same batch each start from what the previous one left. Each
        // works on copies of the touched bitmaps; the state changes only after the commit.
        let _one_at_a_time = self.acking.lock().unwrap_or_else(|p| p.into_inner());
        let mut txn = db.begin_write().map_err(db_err)?;
        let sync = self.since_sync() >= ACK_SYNC_EVERY;
        if !sync {
            txn.set_durability(Durability::None);
        }
        let mut touched: BTreeMap<u64, OpenBatch> = BTreeMap::new();
        {
            let st = self.state();
            for &(batch, _) in &positions {
                if let Some(o) = st.open.get(&batch) {
                    touched.entry(batch).or_insert_with(|| OpenBatch {
                        len: o.len,
                        bytes: o.bytes,
                        acked: o.acked.clone(),
                    });
                }
            }
        }
        let mut newly = 0u64;
        for &(batch, i) in &positions {
            if let Some(o) = touched.get_mut(&batch) {
                if o.acked.insert(i) {
                    newly += 1;
                }
            }
        }
        if newly == 0 {
            return Ok(());
        }
        let mut freed = 0u64;
        {
            let mut batches = txn.open_table(BATCHES).map_err(db_err)?;
            let mut acked = txn.open_table(ACKED).map_err(db_err)?;
            for (&batch, o) in &touched {
                if o.acked.set >= o.len {
                    batches.remove(batch).map_err(db_err)?;
                    acked.remove(batch).map_err(db_err)?;
                    freed += o.bytes;
                } else {
                    acked
                        .insert(batch, o.acked.bits.as_slice())
                        .map_err(db_err)?;
                }
            }
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let used = meta_get(&meta, META_BYTES)?.unwrap_or(0);
            let unacked = meta_get(&meta, META_UNACKED)?.unwrap_or(0);
            meta.insert(META_BYTES, used.saturating_sub(freed))
                .map_err(db_err)?;
            meta.insert(META_UNACKED, unacked.saturating_sub(newly))
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        if sync {
            self.synced();
        } else {
            self.unsynced
                .store(true, std::sync::atomic::Ordering::Release);
        }
        let mut st = self.state();
        for pos in &positions {
            st.in_flight.remove(pos);
            st.released.remove(pos);
        }
        for (batch, o) in touched {
            if o.acked.set >= o.len {
                st.open.remove(&batch);
            } else if let Some(open) = st.open.get_mut(&batch) {
                open.acked = o.acked;
            }
        }
        st.unacked = st.unacked.saturating_sub(newly);
        Ok(())
    }
}

impl Drop for Shared {
    /// A clean close persists the acks still waiting for an fsync (an empty durable commit).
    fn drop(&mut self) {
        if !self.unsynced.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let Some(db) = slot.as_ref() else {
            return;
        };
        let synced = match db.begin_write() {
            Ok(t) => t.commit().map_err(db_err),
            Err(e) => Err(db_err(e)),
        };
        if let Err(e) = synced {
            tracing::warn!(error = %e, "disk queue: final ack sync failed; acked records may be delivered again");
        }
    }
}

fn positions(tokens: &[AckToken]) -> Result<Vec<Pos>, BackendError> {
    tokens
        .iter()
        .map(|t| match *t {
            AckToken::Disk { batch, index } => Ok((batch, index)),
            _ => Err(t.foreign(BACKEND)),
        })
        .collect()
}

/// Why the queue file could not be opened.
enum Opening {
    /// The file is not a readable queue (corrupted, not a redb file, truncated).
    Unreadable(String),
    Failed(BackendError),
}

impl Opening {
    fn into_error(self) -> BackendError {
        match self {
            Self::Unreadable(reason) => BackendError::fatal(BACKEND, reason),
            Self::Failed(e) => e,
        }
    }
}

/// Opens (or creates) the queue file and reads its state back.
fn open_and_load(file: &Path) -> Result<(Database, State, u64), Opening> {
    let unreadable =
        |e: &dyn std::fmt::Display| Opening::Unreadable(format!("{}: {e}", file.display()));
    // redb asserts (panics) on some damaged files, a file cut shorter than its header says
    // among them; such a panic is an unreadable file too, not a reason to crash-loop.
    let created = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Database::builder()
            .set_cache_size(CACHE_BYTES)
            // Lets a later redb 3 open the file without an upgrade step.
            .create_with_file_format_v3(true)
            .create(file)
    }))
    .map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "redb panicked while opening it".into());
        unreadable(&what)
    })?;
    let db = created.map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Opening::Failed(BackendError::fatal(
            BACKEND,
            format!(
                "{} is already open (another bucketd on this state dir?)",
                file.display()
            ),
        )),
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(c)) => unreadable(&c),
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ) =>
        {
            unreadable(&io)
        }
        redb::DatabaseError::UpgradeRequired(v) => {
            unreadable(&format!("file format {v} is not a queue this build reads"))
        }
        e => Opening::Failed(open_err(file, e)),
    })?;
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load_state(&db)))
        .map_err(|_| unreadable(&"redb panicked while reading the queue's state"))?;
    match loaded {
        Ok((state, bytes)) => Ok((db, state, bytes)),
        // Readable by redb but not a queue's tables and counters: unreadable too.
        Err(BackendError::Fatal { message, .. }) => Err(Opening::Unreadable(format!(
            "{}: {message}",
            file.display()
        ))),
        Err(e) => Err(Opening::Failed(e)),
    }
}

/// Renames an unreadable queue file out of the way (`<file>.unreadable-<unix seconds>`).
fn set_aside(file: &Path) -> Result<std::path::PathBuf, BackendError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut name = file.as_os_str().to_owned();
    name.push(format!(".unreadable-{secs}"));
    let aside = std::path::PathBuf::from(name);
    std::fs::rename(file, &aside).map_err(|e| {
        BackendError::fatal(
            BACKEND,
            format!("cannot set aside the unreadable {}: {e}", file.display()),
        )
    })?;
    Ok(aside)
}

fn open_err(file: &Path, e: impl Into<redb::Error>) -> BackendError {
    let e = e.into();
    match e {
        redb::Error::Io(io) if no_space(&io) => BackendError::NoSpace {
            backend: BACKEND,
            message: format!("cannot open {}: {io}", file.display()),
        },
        redb::Error::Io(_) | redb::Error::PreviousIo => {
            BackendError::unavailable(BACKEND, format!("cannot open {}: {e}", file.display()))
        }
        e => BackendError::fatal(BACKEND, format!("cannot open {}: {e}", file.display())),
    }
}

/// Whether an I/O error says the file system (or the quota) is full.
fn no_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// A full file system refuses at once ([`BackendError::NoSpace`]); other I/O errors may pass
/// (and `PreviousIo`, the state redb is left in after one, passes with a reopen); anything else
/// (corruption) needs an operator.
fn db_err(e: impl Into<redb::Error>) -> BackendError {
    match e.into() {
        redb::Error::Io(e) if no_space(&e) => BackendError::NoSpace {
            backend: BACKEND,
            message: e.to_string(),
        },
        redb::Error::Io(e) => BackendError::unavailable(BACKEND, e),
        redb::Error::PreviousIo => {
            BackendError::unavailable(BACKEND, "an earlier I/O error; reopening the queue file")
        }
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
        let blob = encode_batch(records)?;
        let count = records.len() as u64;
        self.blocking(move |s, db| s.publish(db, blob, count))
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
            let got = self.blocking(move |s, db| s.receive_now(db, max)).await?;
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
        let positions = positions(tokens)?;
        self.blocking(move |s, db| s.ack(db, positions)).await
    }

    async fn release(&self, tokens: &[AckToken]) -> Result<(), BackendError> {
        let positions = positions(tokens)?;
        {
            let mut st = self.shared.state();
            for pos in positions {
                // Only what is in flight: releasing twice, or after an ack, changes nothing.
                if st.in_flight.remove(&pos) {
                    st.released.insert(pos);
                }
            }
        }
        self.shared.ready.notify_waiters();
        Ok(())
    }

    async fn depth(&self) -> Result<Option<u64>, BackendError> {
        let st = self.shared.state();
        Ok(Some(st.unacked.saturating_sub(st.in_flight.len() as u64)))
    }

    async fn health(&self) -> Result<(), BackendError> {
        self.blocking(|_, db| {
            let txn = db.begin_read().map_err(db_err)?;
            txn.open_table(BATCHES).map_err(db_err)?;
            Ok(())
        })
        .await
    }
}
