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
//! redelivers everything not acked. A queue file from before batching (table `records`, one
//! entry per record) is converted when opened.

use crate::queue::{AckToken, Delivery, EventQueue, Record, QUEUE_FULL};
use crate::BackendError;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

const BACKEND: &str = "disk";

/// Default bound of the queue: 1 GiB of record bytes.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// File name of the database inside [`DiskConfig::path`].
pub const FILE_NAME: &str = "queue.redb";

/// redb's page cache. Records are read about once, so a small cache is enough.
const CACHE_BYTES: usize = 32 << 20;

const BATCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("batches");
const ACKED: TableDefinition<u64, &[u8]> = TableDefinition::new("acked");
/// One entry per record: the layout before batching, converted at open.
const LEGACY_RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_BYTES: &str = "bytes";
const META_UNACKED: &str = "unacked";

/// Records per batch when converting a legacy queue file.
const LEGACY_BATCH: usize = 1000;

/// Bytes counted for a stored batch: its encoding and its 8-byte key.
fn accounted(encoded_len: usize) -> u64 {
    encoded_len as u64 + 8
}

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
    /// Bound on the queued bytes (key + value + 8 bytes per record, 12 per published batch).
    /// At the bound, `publish` fails with a [`crate::queue::is_queue_full`] error; a batch
    /// frees its bytes once every record of it is acked. The file itself is larger than the
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
    /// Serialises acks (see [`Shared::ack`]).
    acking: Mutex<()>,
    /// Woken when records become receivable (publish, release).
    ready: Notify,
}

/// A record's place: (batch number, index in the batch).
type Pos = (u64, u32);

/// What only this process knows: the delivery positions.
#[derive(Debug, Default)]
struct State {
    /// The number the next published batch gets.
    next_batch: u64,
    /// Records at or after this position were never received by this process.
    cursor: Pos,
    /// Batches read since the start and not yet deleted: their size and acked records.
    open: BTreeMap<u64, OpenBatch>,
    /// Received and neither acked nor released.
    in_flight: HashSet<Pos>,
    /// Released: to be received again before anything new.
    released: BTreeSet<Pos>,
    /// Records stored and not acked.
    unacked: u64,
}

/// A batch this process has read.
#[derive(Debug)]
struct OpenBatch {
    len: u32,
    /// Its accounted bytes, freed when it is deleted.
    bytes: u64,
    acked: Bitmap,
}

/// One bit per record of a batch.
#[derive(Debug, Clone)]
struct Bitmap {
    bits: Vec<u8>,
    set: u32,
}

impl Bitmap {
    fn new(len: u32) -> Self {
        Self {
            bits: vec![0; (len as usize).div_ceil(8)],
            set: 0,
        }
    }

    fn from_bytes(len: u32, bytes: &[u8]) -> Self {
        let mut b = Self::new(len);
        for i in 0..len {
            if bytes
                .get(i as usize / 8)
                .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
            {
                b.insert(i);
            }
        }
        b
    }

    fn contains(&self, i: u32) -> bool {
        self.bits
            .get(i as usize / 8)
            .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
    }

    /// Sets bit `i`; false when it was set already (or out of range).
    fn insert(&mut self, i: u32) -> bool {
        match self.bits.get_mut(i as usize / 8) {
            Some(byte) if *byte & (1 << (i % 8)) == 0 => {
                *byte |= 1 << (i % 8);
                self.set += 1;
                true
            }
            _ => false,
        }
    }
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
                db,
                max_bytes: config.max_bytes,
                state: Mutex::new(state),
                acking: Mutex::new(()),
                ready: Notify::new(),
            }),
        })
    }

    /// Runs `f` on the blocking pool (redb calls block on disk I/O and fsync).
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

fn meta_get(meta: &redb::Table<&str, u64>, key: &str) -> Result<Option<u64>, BackendError> {
    Ok(meta.get(key).map_err(db_err)?.map(|v| v.value()))
}

/// Reads the counters and positions back (converting a legacy file first).
fn load_state(db: &Database) -> Result<(State, u64), BackendError> {
    let txn = db.begin_write().map_err(db_err)?;
    convert_legacy(&txn)?;
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

/// Moves the records of a pre-batching queue file into batches, in order.
fn convert_legacy(txn: &WriteTransaction) -> Result<(), BackendError> {
    let legacy: Vec<Record> = {
        let table = txn.open_table(LEGACY_RECORDS).map_err(db_err)?;
        if table.is_empty().map_err(db_err)? {
            Vec::new()
        } else {
            let mut out = Vec::new();
            for item in table.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                out.push(decode_legacy(k.value(), v.value())?);
            }
            out
        }
    };
    txn.delete_table(LEGACY_RECORDS).map_err(db_err)?;
    if legacy.is_empty() {
        return Ok(());
    }
    let mut batches = txn.open_table(BATCHES).map_err(db_err)?;
    let first = batches
        .last()
        .map_err(db_err)?
        .map_or(0, |(k, _)| k.value() + 1);
    let mut bytes = 0;
    for (batch, chunk) in (first..).zip(legacy.chunks(LEGACY_BATCH)) {
        let blob = encode_batch(chunk)?;
        bytes += accounted(blob.len());
        batches.insert(batch, blob.as_slice()).map_err(db_err)?;
    }
    let mut meta = txn.open_table(META).map_err(db_err)?;
    let old_bytes = meta_get(&meta, META_BYTES)?.unwrap_or(0);
    let old_unacked = meta_get(&meta, META_UNACKED)?.unwrap_or(0);
    meta.insert(META_BYTES, old_bytes + bytes).map_err(db_err)?;
    meta.insert(META_UNACKED, old_unacked + legacy.len() as u64)
        .map_err(db_err)?;
    tracing::info!(
        records = legacy.len(),
        "disk queue converted to batched storage"
    );
    Ok(())
}

/// A legacy record: `[key length: u32 LE][key][value]`.
fn decode_legacy(seq: u64, bytes: &[u8]) -> Result<Record, BackendError> {
    let corrupt = || BackendError::fatal(BACKEND, format!("legacy record {seq} is corrupt"));
    let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(corrupt)?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err(corrupt());
    }
    let (key, value) = rest.split_at(len);
    Ok(Record {
        key: std::str::from_utf8(key).map_err(|_| corrupt())?.to_owned(),
        value: value.to_vec(),
    })
}

fn len_u32(n: usize, what: &str) -> Result<u32, BackendError> {
    u32::try_from(n).map_err(|_| BackendError::fatal(BACKEND, format!("{what} longer than 4 GiB")))
}

/// Packs records into one batch value.
fn encode_batch(records: &[Record]) -> Result<Vec<u8>, BackendError> {
    let size: usize = records
        .iter()
        .map(|r| 8 + r.key.len() + r.value.len())
        .sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&len_u32(records.len(), "batch")?.to_le_bytes());
    for r in records {
        out.extend_from_slice(&len_u32(r.key.len(), "record key")?.to_le_bytes());
        out.extend_from_slice(r.key.as_bytes());
        out.extend_from_slice(&len_u32(r.value.len(), "record value")?.to_le_bytes());
        out.extend_from_slice(&r.value);
    }
    Ok(out)
}

fn corrupt(batch: u64) -> BackendError {
    BackendError::fatal(BACKEND, format!("batch {batch} is corrupt"))
}

/// The record count in a batch's header.
fn batch_len(batch: u64, blob: &[u8]) -> Result<u32, BackendError> {
    let (n, _) = blob
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt(batch))?;
    Ok(u32::from_le_bytes(*n))
}

/// One record of a batch as stored: (index, key, value).
type RawRecord<'a> = (u32, &'a [u8], &'a [u8]);

/// Walks the records of a batch.
struct BatchReader<'a> {
    batch: u64,
    rest: &'a [u8],
    index: u32,
    len: u32,
}

impl<'a> BatchReader<'a> {
    fn new(batch: u64, blob: &'a [u8]) -> Result<Self, BackendError> {
        let len = batch_len(batch, blob)?;
        Ok(Self {
            batch,
            rest: &blob[4..],
            index: 0,
            len,
        })
    }

    fn take(&mut self) -> Result<&'a [u8], BackendError> {
        let (n, rest) = self
            .rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt(self.batch))?;
        let n = u32::from_le_bytes(*n) as usize;
        if rest.len() < n {
            return Err(corrupt(self.batch));
        }
        let (field, rest) = rest.split_at(n);
        self.rest = rest;
        Ok(field)
    }

    /// The next record, or `None` after the last.
    fn next_record(&mut self) -> Result<Option<RawRecord<'a>>, BackendError> {
        if self.index >= self.len {
            return Ok(None);
        }
        let key = self.take()?;
        let value = self.take()?;
        let i = self.index;
        self.index += 1;
        Ok(Some((i, key, value)))
    }
}

fn delivery(pos: Pos, key: &[u8], value: &[u8]) -> Result<Delivery, BackendError> {
    let key = std::str::from_utf8(key).map_err(|_| corrupt(pos.0))?;
    Ok(Delivery {
        record: Record {
            key: key.to_owned(),
            value: value.to_vec(),
        },
        token: AckToken(format!("{}:{}", pos.0, pos.1)),
    })
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock still holds consistent data: every update is a few plain assignments.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, blob: Vec<u8>, count: u64) -> Result<(), BackendError> {
        let batch_bytes = accounted(blob.len());
        let txn = self.db.begin_write().map_err(db_err)?;
        let batch = self.state().next_batch;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let used = meta_get(&meta, META_BYTES)?.unwrap_or(0);
            if used.saturating_add(batch_bytes) > self.max_bytes {
                return Err(BackendError::fatal(
                    BACKEND,
                    format!(
                        "{QUEUE_FULL}: {used} of {} bytes used, batch of {count} records needs {batch_bytes}",
                        self.max_bytes
                    ),
                ));
            }
            let unacked = meta_get(&meta, META_UNACKED)?.unwrap_or(0);
            meta.insert(META_BYTES, used + batch_bytes)
                .map_err(db_err)?;
            meta.insert(META_UNACKED, unacked + count).map_err(db_err)?;
            let mut batches = txn.open_table(BATCHES).map_err(db_err)?;
            batches.insert(batch, blob.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
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

    fn receive_now(&self, max: usize) -> Result<Vec<Delivery>, BackendError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let txn = self.db.begin_read().map_err(db_err)?;
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

    fn ack(&self, positions: Vec<Pos>) -> Result<(), BackendError> {
        // One ack at a time, from reading the bitmaps to applying them after the commit, so
        // concurrent acks of the same batch each start from what the previous one left. Each
        // works on copies of the touched bitmaps; the state changes only after the commit.
        let _one_at_a_time = self.acking.lock().unwrap_or_else(|p| p.into_inner());
        let txn = self.db.begin_write().map_err(db_err)?;
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

fn parse_tokens(tokens: &[AckToken]) -> Result<Vec<Pos>, BackendError> {
    tokens
        .iter()
        .map(|t| {
            t.0.split_once(':')
                .and_then(|(b, i)| Some((b.parse().ok()?, i.parse().ok()?)))
                .ok_or_else(|| {
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
        let blob = encode_batch(records)?;
        let count = records.len() as u64;
        self.blocking(move |s| s.publish(blob, count)).await?;
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
        let positions = parse_tokens(tokens)?;
        self.blocking(move |s| s.ack(positions)).await
    }

    async fn release(&self, tokens: &[AckToken]) -> Result<(), BackendError> {
        let positions = parse_tokens(tokens)?;
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
        self.blocking(|s| {
            let txn = s.db.begin_read().map_err(db_err)?;
            txn.open_table(BATCHES).map_err(db_err)?;
            Ok(())
        })
        .await
    }
}
