//! The RocksDB store: column families, format version, reads and atomic batch writes; the
//! dedup compaction filter prunes below the stored horizon ([`DedupHorizon`]).
//!
//! Every call here blocks; async callers go through `spawn_blocking` or a dedicated thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use rocksdb::compaction_filter::Decision;
use rocksdb::{
    BlockBasedOptions, BoundColumnFamily, ColumnFamilyDescriptor, DBCompressionType,
    DBWithThreadMode, Direction, IteratorMode, MultiThreaded, Options, ReadOptions, WriteBatch,
    WriteOptions,
};

use super::codec::{self, CodecError};
use super::horizon::DedupHorizon;
use super::keys;
use super::values;
use super::{DeadLetter, DedupRecord, LogEntry};

// The column families are named, with every key, by the core's key module.
pub use super::keys::{
    AGGREGATE_FAMILIES, CF_ALERTS, CF_AUDIT, CF_BILLING, CF_CHECKPOINTS, CF_CURRENT,
    CF_DEAD_LETTER, CF_DEDUP, CF_HOURLY, CF_LOG, CF_META, CF_MONTHLY, CF_OFFSETS, CF_QUOTA,
    CF_TOKENS, COLUMN_FAMILIES, RETIRED_COLUMN_FAMILIES,
};

/// Most table files RocksDB keeps open at once: a bound, so the file descriptors the store
/// needs are known and the HTTP server can leave them free (an unbounded table cache plus
/// client connections once exhausted the process's limit and broke the WAL).
pub const MAX_OPEN_TABLE_FILES: i32 = 1_024;

/// Layout version of this build's keys and values; a store of another version is refused,
/// and one of an older version is upgraded by `tally migrate`.
/// - 2: log entries and dead letters in log format v2 ([`super::format`]), alerts at
///   deterministic positions;
/// - 3: a tenant's billing state is a header row plus a row per closed period, invoice and
///   decided transition (the log is as in 2: the upgrade refolds the projections);
/// - 4: aggregate rows (hourly, monthly, billing usage) are written as merge operands, which
///   a build without the merge operator cannot read.
pub const FORMAT_VERSION: u32 = 4;
type Db = DBWithThreadMode<MultiThreaded>;

/// Storage failures. Each is handled by refusing the operation (HTTP 503 / consumer pause);
/// `FormatVersion` and `Corrupt` stop start-up or the projector, since continuing would be wrong;
/// `IncompleteCopy` and `DataDir` stop start-up (and every command opening the directory).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("{}", format_version_advice(dir, *found, *expected))]
    FormatVersion {
        dir: String,
        found: u32,
        expected: u32,
    },
    #[error("corrupt value in {cf}: {source}")]
    Corrupt {
        cf: &'static str,
        source: CodecError,
    },
    #[error("the store is shut down")]
    Closed,
    #[error(
        "only {available} free under {dir}, below the reserve of {reserve} (--min-free-disk); appends pause until space is freed"
    )]
    DiskFull {
        dir: String,
        available: bytesize::ByteSize,
        reserve: bytesize::ByteSize,
    },
    #[error("cannot read the free space of {dir}: {source}")]
    DiskStat { dir: String, source: std::io::Error },
    #[error(
        "{dir} holds RocksDB files ({files}) but no CURRENT file: it is an incomplete copy (an interrupted `tally restore`?), not a store; restore again into an empty directory, or move these files away to start a new store"
    )]
    IncompleteCopy { dir: String, files: String },
    #[error("cannot read the data directory {dir}: {source}")]
    DataDir { dir: String, source: std::io::Error },
}

/// What to do with a store of another format version.
fn format_version_advice(dir: &str, found: u32, expected: u32) -> String {
    if found < expected {
        format!(
            "{dir} holds format version {found}, written by an older release; this build reads {expected}. Stop every engine on it, back it up (`tally backup`), then upgrade it with `tally migrate --data-dir {dir}`"
        )
    } else {
        format!(
            "{dir} holds format version {found}, written by a newer release; this build reads {expected}: run that release on it"
        )
    }
}

impl StoreError {
    /// RocksDB keeps failing every write after some I/O errors (a WAL or table file it could
    /// not create for lack of descriptors or space) until the database is reopened.
    pub fn needs_reopen(&self) -> bool {
        matches!(self, StoreError::Rocks(_))
    }
}

/// Settings that shape the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long the log writer remembers event ids: it moves the stored forgetting horizon
    /// ([`Store::ids_forgotten_before`]) up to `now − dedup_horizon`. Opening alone never
    /// moves it, so tools that only read or copy may pass any value.
    pub dedup_horizon: Duration,
    /// Appends are refused while the data directory's file system has less free space than
    /// this (0: no check).
    pub min_free_disk: u64,
}

/// A stored (key, value).
pub type Row = (Box<[u8]>, Box<[u8]>);

/// A row to put: (column family, key, value).
pub type PutRow = (&'static str, Vec<u8>, Vec<u8>);

/// One atomic write across column families, named by their constants: the only way rows are
/// written ([`Store::commit`]). It keeps the handle of each family it has used, so a batch of
/// many rows looks each up once.
pub struct Batch<'s> {
    store: &'s Store,
    inner: WriteBatch,
    handles: Vec<(&'static str, Arc<BoundColumnFamily<'s>>)>,
}

impl<'s> Batch<'s> {
    fn handle(&mut self, cf: &'static str) -> Arc<BoundColumnFamily<'s>> {
        if let Some((_, handle)) = self.handles.iter().find(|(name, _)| *name == cf) {
            return handle.clone();
        }
        let handle = self.store.cf(cf);
        self.handles.push((cf, handle.clone()));
        handle
    }

    pub fn put(&mut self, cf: &'static str, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let handle = self.handle(cf);
        self.inner.put_cf(&handle, key, value);
    }

    /// Adds an encoded aggregate delta to a row of `hourly`, `monthly` or a usage row of
    /// `billing` (the families with the aggregate merge operator): no read of the row.
    pub fn merge(&mut self, cf: &'static str, key: impl AsRef<[u8]>, delta: impl AsRef<[u8]>) {
        let handle = self.handle(cf);
        self.inner.merge_cf(&handle, key, delta);
    }

    pub fn delete(&mut self, cf: &'static str, key: impl AsRef<[u8]>) {
        let handle = self.handle(cf);
        self.inner.delete_cf(&handle, key);
    }

    /// Deletes every row of `cf`: every key Tally writes sorts below 64 KiB of `0xff`.
    pub fn delete_all(&mut self, cf: &'static str) {
        let handle = self.handle(cf);
        self.inner
            .delete_range_cf(&handle, Vec::<u8>::new(), vec![0xff; 65_536]);
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

/// The RocksDB database with Tally's column families.
#[derive(Clone)]
pub struct Store {
    db: Arc<Db>,
    dir: Arc<PathBuf>,
    min_free_disk: u64,
    horizon: DedupHorizon,
    /// Writes skip the WAL: a rebuild's shadow store, thrown away if the process stops.
    unlogged: bool,
    /// Table files written for [`Store::ingest_merge_operands`], to name the next one.
    bulk_files: Arc<AtomicU64>,
}

impl Store {
    pub fn open(dir: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let (store, found) = Self::open_for_migration(dir, options)?;
        if found != FORMAT_VERSION {
            return Err(StoreError::FormatVersion {
                dir: dir.display().to_string(),
                found,
                expected: FORMAT_VERSION,
            });
        }
        Ok(store)
    }

    /// Opens a store of any format version for `tally migrate`, with the version it holds (a
    /// new store is created at this build's).
    pub fn open_for_migration(
        dir: &Path,
        options: &StoreOptions,
    ) -> Result<(Store, u32), StoreError> {
        refuse_incomplete_copy(dir)?;
        // Nothing is pruned until the stored horizon is read.
        let forgotten_before = Arc::new(AtomicI64::new(i64::MIN));
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.increase_parallelism(2);
        db_options.set_keep_log_file_num(4);
        db_options.set_max_open_files(MAX_OPEN_TABLE_FILES);
        // Memtables of every family together: past this the largest is flushed, so the busy
        // families (log, dedup, the projections) cannot each hold 128 MB.
        db_options.set_db_write_buffer_size(MEMTABLE_BUDGET);
        let descriptors = COLUMN_FAMILIES
            .iter()
            .map(|&name| ColumnFamilyDescriptor::new(name, cf_options(name, &forgotten_before)));
        let db = Db::open_cf_descriptors(&db_options, dir, descriptors)?;
        let store = Store {
            db: Arc::new(db),
            dir: Arc::new(dir.to_path_buf()),
            min_free_disk: options.min_free_disk,
            horizon: DedupHorizon::new(options.dedup_horizon, forgotten_before),
            unlogged: false,
            bulk_files: Arc::default(),
        };
        let found = store.stored_format_version()?;
        store.load_horizon()?;
        Ok((store, found))
    }

    /// Opens a new scratch store (a rebuild's shadow) whose writes skip the WAL: nothing in it
    /// has to survive a crash, since it is removed and refolded from the log.
    pub fn open_scratch(dir: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let mut store = Self::open(dir, options)?;
        store.unlogged = true;
        Ok(store)
    }

    /// Opens for reading only, beside a running engine (inspection); nothing is written.
    pub fn open_read_only(dir: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        refuse_incomplete_copy(dir)?;
        let forgotten_before = Arc::new(AtomicI64::new(i64::MIN));
        let mut db_options = Options::default();
        // RocksDB's info log would otherwise be rotated inside the directory: a read-only open
        // (a dry run, an inspection) leaves every byte of it as it was.
        let info_logs = std::env::temp_dir().join("tally-rocksdb-read-only-logs");
        // Failing to create it fails the open below with RocksDB's own message.
        let _ = std::fs::create_dir_all(&info_logs);
        db_options.set_db_log_dir(info_logs);
        let descriptors: Vec<ColumnFamilyDescriptor> = COLUMN_FAMILIES
            .iter()
            .map(|&name| ColumnFamilyDescriptor::new(name, cf_options(name, &forgotten_before)))
            .collect();
        let db = Db::open_cf_descriptors_read_only(&db_options, dir, descriptors, false)?;
        let store = Store {
            db: Arc::new(db),
            dir: Arc::new(dir.to_path_buf()),
            min_free_disk: 0,
            horizon: DedupHorizon::new(options.dedup_horizon, forgotten_before),
            unlogged: false,
            bulk_files: Arc::default(),
        };
        store.load_horizon()?;
        Ok(store)
    }

    fn load_horizon(&self) -> Result<(), StoreError> {
        let stored_i64 = |key: keys::MetaKey, what| -> Result<Option<i64>, StoreError> {
            self.get(CF_META, &key.encode())?
                .map(|bytes| {
                    codec::decode_i64(&bytes, what).map_err(|source| StoreError::Corrupt {
                        cf: CF_META,
                        source,
                    })
                })
                .transpose()
        };
        self.horizon.restore(
            stored_i64(keys::MetaKey::LongestDedupHorizon, "longest dedup horizon")?,
            stored_i64(keys::MetaKey::IdsForgottenBefore, "ids forgotten before")?,
        );
        Ok(())
    }

    /// How far back event ids are remembered, and below which they may be forgotten.
    pub fn horizon(&self) -> &DedupHorizon {
        &self.horizon
    }

    /// A consistent copy of the whole store in `to` (a new directory), taken while writing
    /// goes on: RocksDB hard-links the SST files and copies the rest.
    pub fn checkpoint_to(&self, to: &Path) -> Result<(), StoreError> {
        self.db.flush_wal(true)?;
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db)?;
        checkpoint.create_checkpoint(to)?;
        Ok(())
    }

    /// Replaces the whole content of each of `cfs` with `source`'s, and puts `extra` rows, in
    /// one atomic write.
    pub fn replace_from(
        &self,
        source: &Store,
        cfs: &[&'static str],
        extra: &[PutRow],
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for &name in cfs {
            let cf = self.cf(name);
            self.scan(name, &[], None, |key, _| {
                batch.delete_cf(&cf, key);
                true
            })?;
            source.scan(name, &[], None, |key, value| {
                batch.put_cf(&cf, key, value);
                true
            })?;
        }
        for (name, key, value) in extra {
            batch.put_cf(&self.cf(name), key, value);
        }
        self.write(batch, true)
    }

    /// The format version the store holds; a store without one is new and gets this build's.
    fn stored_format_version(&self) -> Result<u32, StoreError> {
        let meta = self.cf(CF_META);
        match self
            .db
            .get_cf(&meta, keys::MetaKey::FormatVersion.encode())?
        {
            Some(bytes) => {
                let found = codec::decode_u64(&bytes, "format version").map_err(|source| {
                    StoreError::Corrupt {
                        cf: CF_META,
                        source,
                    }
                })?;
                Ok(u32::try_from(found).unwrap_or(u32::MAX))
            }
            None => {
                self.db.put_cf(
                    &meta,
                    keys::MetaKey::FormatVersion.encode(),
                    codec::encode_u64(u64::from(FORMAT_VERSION)),
                )?;
                Ok(FORMAT_VERSION)
            }
        }
    }

    /// Records in `batch` that the store now holds this build's format (the last write of a
    /// migration).
    pub fn put_format_version(&self, batch: &mut Batch<'_>) {
        batch.put(
            CF_META,
            keys::MetaKey::FormatVersion.encode(),
            codec::encode_u64(u64::from(FORMAT_VERSION)),
        );
    }

    pub fn cf(&self, name: &'static str) -> Arc<BoundColumnFamily<'_>> {
        // Every name in COLUMN_FAMILIES is created at open; asking for another is a bug.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} is not opened"))
    }

    /// Bytes free to unprivileged writers on the data directory's file system.
    pub fn available_disk(&self) -> Result<u64, StoreError> {
        let stat =
            rustix::fs::statvfs(self.dir.as_path()).map_err(|errno| StoreError::DiskStat {
                dir: self.dir.display().to_string(),
                source: errno.into(),
            })?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Refuses to grow the log below the free-space reserve. RocksDB latches a failed write
    /// (ENOSPC) until the database is reopened, so appends stop short of a full disk and
    /// resume by themselves once space is freed; the reserve leaves room for projections,
    /// flushes and compactions meanwhile.
    pub fn ensure_room(&self) -> Result<(), StoreError> {
        if self.min_free_disk == 0 {
            return Ok(());
        }
        let available = self.available_disk()?;
        if available < self.min_free_disk {
            return Err(StoreError::DiskFull {
                dir: self.dir.display().to_string(),
                available: bytesize::ByteSize::b(available),
                reserve: bytesize::ByteSize::b(self.min_free_disk),
            });
        }
        Ok(())
    }

    /// A new, empty batch of writes to this store.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            inner: WriteBatch::default(),
            handles: Vec::new(),
        }
    }

    /// Writes a batch atomically; `durable` waits for the WAL to reach the disk (fsync).
    pub fn commit(&self, batch: Batch<'_>, durable: bool) -> Result<(), StoreError> {
        self.write(batch.inner, durable)
    }

    fn write(&self, batch: WriteBatch, durable: bool) -> Result<(), StoreError> {
        let mut write_options = WriteOptions::default();
        write_options.set_sync(durable && !self.unlogged);
        write_options.disable_wal(self.unlogged);
        self.db.write_opt(batch, &write_options)?;
        Ok(())
    }

    /// The highest key of a CF keyed by `u64` BE (log, dead letters), if any.
    pub fn last_seq(&self, cf: &'static str) -> Result<Option<u64>, StoreError> {
        let handle = self.cf(cf);
        let mut iter = self.db.iterator_cf(&handle, IteratorMode::End);
        match iter.next() {
            Some(item) => Ok(keys::decode_seq_key(&item?.0)),
            None => Ok(None),
        }
    }

    /// Up to `limit` log entries with seq ≥ `from`, in order.
    pub fn read_log(&self, from: u64, limit: usize) -> Result<Vec<(u64, LogEntry)>, StoreError> {
        let mut entries = Vec::with_capacity(limit.min(65_536));
        self.read_log_into(from, limit, &mut entries)?;
        Ok(entries)
    }

    /// As [`Store::read_log`], appending to `entries`: a caller that reads batch after batch
    /// reuses one allocation (a batch of entries is megabytes, which the allocator would
    /// otherwise map, fault in and zero afresh each time).
    pub fn read_log_into(
        &self,
        from: u64,
        limit: usize,
        entries: &mut Vec<(u64, LogEntry)>,
    ) -> Result<(), StoreError> {
        let handle = self.cf(CF_LOG);
        let start = keys::seq_key(from);
        entries.reserve(limit.min(65_536));
        for item in self
            .db
            .iterator_cf(&handle, IteratorMode::From(&start, Direction::Forward))
            .take(limit)
        {
            let (key, value) = item?;
            let corrupt = |source| StoreError::Corrupt { cf: CF_LOG, source };
            let seq = keys::decode_seq_key(&key).ok_or_else(|| {
                corrupt(CodecError {
                    what: "log key",
                    reason: format!("{} bytes", key.len()),
                })
            })?;
            entries.push((seq, values::decode_entry(&value).map_err(corrupt)?));
        }
        Ok(())
    }

    pub fn dedup_lookup(
        &self,
        dedup_keys: &[[u8; 16]],
    ) -> Result<Vec<Option<DedupRecord>>, StoreError> {
        let handle = self.cf(CF_DEDUP);
        self.db
            .batched_multi_get_cf(&handle, dedup_keys.iter(), false)
            .into_iter()
            .map(|result| match result? {
                Some(bytes) => {
                    values::decode_dedup(&bytes)
                        .map(Some)
                        .map_err(|source| StoreError::Corrupt {
                            cf: CF_DEDUP,
                            source,
                        })
                }
                None => Ok(None),
            })
            .collect()
    }

    /// Raw values of `keys` in `cf`, in order.
    pub fn multi_get(
        &self,
        cf: &'static str,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let handle = self.cf(cf);
        self.db
            .batched_multi_get_cf(&handle, keys.iter(), false)
            .into_iter()
            .map(|result| Ok(result?.map(|slice| slice.to_vec())))
            .collect()
    }

    pub fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(&self.cf(cf), key)?)
    }

    /// Calls `visit` with every (key, value) in `[start, end)`; `visit` returns false to stop.
    pub fn scan(
        &self,
        cf: &'static str,
        start: &[u8],
        end: Option<&[u8]>,
        mut visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.scan_directed(cf, start, end, false, &mut visit)
    }

    /// Visits the keys in `[start, end)`, from the lowest up or (`reverse`) from the highest
    /// down, while `visit` returns true.
    fn scan_directed(
        &self,
        cf: &'static str,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
        visit: &mut impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let handle = self.cf(cf);
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_lower_bound(start.to_vec());
        if let Some(end) = end {
            read_options.set_iterate_upper_bound(end.to_vec());
        }
        let mut iter = self.db.raw_iterator_cf_opt(&handle, read_options);
        if reverse {
            iter.seek_to_last();
        } else {
            iter.seek(start);
        }
        while iter.valid() {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                break;
            };
            if !visit(key, value) {
                return Ok(());
            }
            if reverse {
                iter.prev();
            } else {
                iter.next();
            }
        }
        iter.status()?;
        Ok(())
    }

    /// Visits the rows in `[start, end)` while `visit` returns `Ok(true)`. A row `visit` cannot
    /// decode stops the scan, which then fails as [`StoreError::Corrupt`] in `cf`: the one
    /// place a scan turns a bad value into an error.
    pub fn scan_decoding(
        &self,
        cf: &'static str,
        start: &[u8],
        end: Option<&[u8]>,
        visit: impl FnMut(&[u8], &[u8]) -> Result<bool, CodecError>,
    ) -> Result<(), StoreError> {
        self.scan_decoding_directed(cf, start, end, false, visit)
    }

    /// [`Store::scan_decoding`] over every row whose key starts with `prefix`.
    pub fn scan_prefix_decoding(
        &self,
        cf: &'static str,
        prefix: &[u8],
        visit: impl FnMut(&[u8], &[u8]) -> Result<bool, CodecError>,
    ) -> Result<(), StoreError> {
        let end = keys::prefix_successor(prefix);
        self.scan_decoding_directed(cf, prefix, end.as_deref(), false, visit)
    }

    /// [`Store::scan_decoding`] from the highest key of `[start, end)` down.
    pub fn scan_reverse_decoding(
        &self,
        cf: &'static str,
        start: &[u8],
        end: &[u8],
        visit: impl FnMut(&[u8], &[u8]) -> Result<bool, CodecError>,
    ) -> Result<(), StoreError> {
        self.scan_decoding_directed(cf, start, Some(end), true, visit)
    }

    fn scan_decoding_directed(
        &self,
        cf: &'static str,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, CodecError>,
    ) -> Result<(), StoreError> {
        let mut failure = None;
        self.scan_directed(
            cf,
            start,
            end,
            reverse,
            &mut |key, value| match visit(key, value) {
                Ok(more) => more,
                Err(source) => {
                    failure = Some(source);
                    false
                }
            },
        )?;
        failure.map_or(Ok(()), |source| Err(StoreError::Corrupt { cf, source }))
    }

    /// Every (key, value) of a column family in key order, as an iterator (for walking two
    /// stores side by side).
    pub fn rows(&self, cf: &'static str) -> impl Iterator<Item = Result<Row, StoreError>> + '_ {
        self.db
            .iterator_cf(&self.cf(cf), IteratorMode::Start)
            .map(|row| row.map_err(StoreError::from))
    }

    /// Every row whose key starts with `prefix`.
    /// Visits the keys in `[start, end)` from the highest down, while `visit` returns true.
    pub fn scan_reverse(
        &self,
        cf: &'static str,
        start: &[u8],
        end: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.scan_directed(cf, start, Some(end), true, &mut visit)
    }

    pub fn scan_prefix(
        &self,
        cf: &'static str,
        prefix: &[u8],
        visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let end = keys::prefix_successor(prefix);
        self.scan(cf, prefix, end.as_deref(), visit)
    }

    pub fn checkpoint(&self, projection: &str) -> Result<Option<u64>, StoreError> {
        match self.get(CF_CHECKPOINTS, projection.as_bytes())? {
            Some(bytes) => codec::decode_u64(&bytes, "checkpoint")
                .map(Some)
                .map_err(|source| StoreError::Corrupt {
                    cf: CF_CHECKPOINTS,
                    source,
                }),
            None => Ok(None),
        }
    }

    /// The next offset to read of each partition of `topic`, as stored with the events.
    pub fn source_offsets(&self, topic: &str) -> Result<BTreeMap<i32, i64>, StoreError> {
        let mut offsets = BTreeMap::new();
        let prefix = keys::OffsetKey::topic_prefix(topic);
        self.scan_prefix_decoding(CF_OFFSETS, &prefix, |key, value| {
            let offset = codec::decode_i64(value, "source offset")?;
            if let Some(key) = keys::OffsetKey::decode(key) {
                offsets.insert(key.partition, offset);
            }
            Ok(true)
        })?;
        Ok(offsets)
    }

    pub fn dead_letters(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DeadLetter)>, StoreError> {
        let mut letters = Vec::new();
        self.scan_decoding(CF_DEAD_LETTER, &keys::seq_key(from), None, |key, value| {
            let letter = values::decode_dead_letter(value)?;
            if let Some(n) = keys::decode_seq_key(key) {
                letters.push((n, letter));
            }
            Ok(letters.len() < limit)
        })?;
        Ok(letters)
    }

    /// Adds `rows` (strictly ascending keys, encoded aggregate deltas) to `cf` as merge
    /// operands in one table file written beside the store and ingested whole: no memtable,
    /// no WAL. For a rebuild's shadow, which folds the log in large sorted chunks.
    pub fn ingest_merge_operands<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        cf: &'static str,
        rows: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), StoreError> {
        let mut rows = rows.into_iter().peekable();
        if rows.peek().is_none() {
            return Ok(());
        }
        let forgotten_before = Arc::new(AtomicI64::new(i64::MIN));
        let options = cf_options(cf, &forgotten_before);
        let mut writer = rocksdb::SstFileWriter::create(&options);
        let path = self.dir.join(format!(
            "bulk-{cf}-{}.sst",
            self.bulk_files.fetch_add(1, Ordering::SeqCst)
        ));
        let written = writer.open(&path).and_then(|()| {
            for (key, value) in rows {
                writer.merge(key, value)?;
            }
            writer.finish()
        });
        if let Err(error) = written {
            let _ = std::fs::remove_file(&path);
            return Err(error.into());
        }
        let mut ingest = rocksdb::IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        let result = self
            .db
            .ingest_external_file_cf_opts(&self.cf(cf), &ingest, vec![&path]);
        // Moved into the store when ingested; removed when it was not.
        let _ = std::fs::remove_file(&path);
        Ok(result?)
    }

    /// Flushes memtables so a clean shutdown leaves nothing to replay from the WAL.
    pub fn flush(&self) -> Result<(), StoreError> {
        for name in COLUMN_FAMILIES {
            self.db.flush_cf(&self.cf(name))?;
        }
        Ok(())
    }

    /// Compacts every column family fully (for measuring bytes at rest).
    pub fn compact_all(&self) -> Result<(), StoreError> {
        self.flush()?;
        for name in COLUMN_FAMILIES {
            self.db
                .compact_range_cf(&self.cf(name), None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// Approximate on-disk bytes of a column family (SST files).
    pub fn cf_size(&self, cf: &'static str) -> u64 {
        self.db
            .property_int_value_cf(&self.cf(cf), "rocksdb.total-sst-files-size")
            .ok()
            .flatten()
            .unwrap_or(0)
    }
}

/// Refuses a directory holding RocksDB table files, a manifest or a WAL but no `CURRENT`:
/// RocksDB would create a new, empty database beside them and the data would seem lost.
fn refuse_incomplete_copy(dir: &Path) -> Result<(), StoreError> {
    if dir.join("CURRENT").exists() {
        return Ok(());
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StoreError::DataDir {
                dir: dir.display().to_string(),
                source,
            });
        }
    };
    let mut files: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| is_rocksdb_file(name))
        .collect();
    if files.is_empty() {
        return Ok(());
    }
    files.sort();
    let count = files.len();
    let mut listed = files.into_iter().take(3).collect::<Vec<_>>().join(", ");
    if count > 3 {
        listed.push_str(&format!(" and {} more", count - 3));
    }
    Err(StoreError::IncompleteCopy {
        dir: dir.display().to_string(),
        files: listed,
    })
}

fn is_rocksdb_file(name: &str) -> bool {
    name.ends_with(".sst") || name.ends_with(".log") || name.starts_with("MANIFEST-")
}

/// Bytes all memtables of a store may hold together.
const MEMTABLE_BUDGET: usize = 192 << 20;

/// Bytes of uncompressed blocks cached, shared by every family of every store in the process
/// (without it each family had a cache of its own).
const BLOCK_CACHE_BYTES: usize = 64 << 20;

fn block_cache() -> &'static rocksdb::Cache {
    static CACHE: std::sync::OnceLock<rocksdb::Cache> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES))
}

/// The bottom level of the log families (written once, then only scanned): zstd level 6 with
/// a 64 KiB dictionary trained per table file, capped at 8 MiB of sampled data (RocksDB would
/// otherwise hold a whole output file, up to 64 MiB, per compaction). The crate sets the cap
/// only through an options string. 15.8 → 13.7 bytes per event over larger blocks alone.
const LOG_BOTTOM_COMPRESSION: &str = "bottommost_compression_opts={\
    enabled=true;window_bits=-14;level=6;strategy=0;max_dict_bytes=65536;\
    zstd_max_train_bytes=4194304;max_dict_buffer_bytes=8388608;use_zstd_dict_trainer=true}";

fn cf_options(name: &str, forgotten_before: &Arc<AtomicI64>) -> Options {
    let mut cf = match name {
        // Parsed before anything else is set: the string makes new options from a base, and
        // the closures set below (merge operator, compaction filter) must be on the result.
        // The string is constant and a test parses it.
        CF_LOG | CF_DEAD_LETTER => Options::default()
            .get_options_from_string(LOG_BOTTOM_COMPRESSION)
            .unwrap_or_default(),
        _ => Options::default(),
    };
    // Fast where data is rewritten soon; zstd at the bottom level, where most of it ends: it
    // takes 2.5 bytes more off each dedup record than lz4 (random keys and fingerprints leave
    // little else), and reads are served from the block cache, which holds blocks uncompressed.
    cf.set_compression_type(DBCompressionType::Lz4);
    cf.set_bottommost_compression_type(DBCompressionType::Zstd);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(block_cache());
    match name {
        CF_LOG | CF_DEAD_LETTER => {
            // Written once, read in order: large blocks compress better.
            table.set_block_size(64 << 10);
        }
        CF_DEDUP => {
            // Point lookups on every append, nearly all of new ids: bloom filters keep those
            // misses off the disk and out of the memtable's skip list.
            table.set_bloom_filter(10.0, false);
            cf.set_memtable_whole_key_filtering(true);
            cf.set_memtable_prefix_bloom_ratio(0.1);
            let forgotten_before = forgotten_before.clone();
            cf.set_compaction_filter(
                "tally-dedup-horizon",
                move |_level: u32, _key: &[u8], value: &[u8]| {
                    match values::decode_dedup(value) {
                        // Only below the stored horizon: the writer refuses those events, so
                        // the record can no longer catch a duplicate. A horizon merely asked
                        // for by this run (a wider or narrower window) never prunes.
                        Ok(record)
                            if record.event_time < forgotten_before.load(Ordering::SeqCst) =>
                        {
                            Decision::Remove
                        }
                        _ => Decision::Keep,
                    }
                },
            );
        }
        _ => {
            table.set_bloom_filter(10.0, false);
        }
    }
    if AGGREGATE_FAMILIES.contains(&name) {
        // Folds add deltas with `Batch::merge` instead of reading and rewriting each row.
        cf.set_merge_operator_associative("tally-aggregate-v1", |_key, existing, operands| {
            tally_core::projection::merge_encoded(existing, operands)
        });
    }
    cf.set_block_based_table_factory(&table);
    cf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::UnixMicros;

    fn put_horizon(store: &Store, batch: &mut Batch<'_>, cutoff: i64) {
        for (key, value) in store.horizon().forgotten_before_rows(cutoff) {
            batch.put(CF_META, key, value);
        }
    }

    fn options(horizon: Duration) -> StoreOptions {
        StoreOptions {
            dedup_horizon: horizon,
            min_free_disk: 0,
        }
    }

    fn put_dedup(store: &Store, key: u8, event_time: UnixMicros) {
        let record = DedupRecord {
            seq: u64::from(key),
            event_time,
            fingerprint: 7,
        };
        let mut batch = store.batch();
        batch.put(CF_DEDUP, [key; 16], values::encode_dedup(&record));
        store.commit(batch, true).unwrap();
    }

    fn remembered(store: &Store) -> Vec<bool> {
        store
            .dedup_lookup(&[[1; 16], [2; 16], [3; 16]])
            .unwrap()
            .iter()
            .map(Option::is_some)
            .collect()
    }

    #[test]
    fn ids_are_forgotten_only_below_the_stored_horizon_whatever_a_later_open_asks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &options(Duration::from_secs(60))).unwrap();
        assert_eq!(store.horizon().ids_forgotten_before(), i64::MIN);
        // Records keep event time rounded up to the second: 3 is below the horizon by a
        // microsecond, so it is forgotten late, never early.
        let hour = 3_600_000_000i64;
        put_dedup(&store, 1, hour);
        put_dedup(&store, 2, 5 * hour);
        put_dedup(&store, 3, 3 * hour - 1);
        // A short horizon asked for at open prunes nothing by itself.
        store.compact_all().unwrap();
        assert_eq!(remembered(&store), [true, true, true]);

        // The writer's step: the horizon is stored, then compactions use it.
        let cutoff = store
            .horizon()
            .forget_cutoff(3 * hour + 60_000_000)
            .unwrap();
        assert_eq!(cutoff, 3 * hour);
        let mut batch = store.batch();
        put_horizon(&store, &mut batch, cutoff);
        store.commit(batch, true).unwrap();
        store.horizon().forgotten_before_written(cutoff);
        store.compact_all().unwrap();
        assert_eq!(remembered(&store), [false, true, true]);
        // Less than a step later there is nothing to store.
        assert_eq!(
            store.horizon().forget_cutoff(3 * hour + 1 + 60_000_000),
            None
        );
        // An older cutoff never lowers it.
        let mut batch = store.batch();
        put_horizon(&store, &mut batch, 10);
        store.commit(batch, true).unwrap();
        drop(store);

        // Reopened with a far wider horizon (a wider late window), the stored one holds.
        let wide = options(Duration::from_secs(365 * 86_400));
        let store = Store::open(dir.path(), &wide).unwrap();
        assert_eq!(store.horizon().ids_forgotten_before(), 3 * hour);
        assert_eq!(store.horizon().forget_cutoff(3 * hour + 60_000_000), None);
        drop(store);
        let read_only = Store::open_read_only(dir.path(), &wide).unwrap();
        assert_eq!(read_only.horizon().ids_forgotten_before(), 3 * hour);
    }

    #[test]
    fn a_run_with_a_shorter_horizon_forgets_no_more_than_the_longest_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let minute = 60_000_000i64;
        let store = Store::open(dir.path(), &options(Duration::from_secs(600))).unwrap();
        let now = 100 * minute;
        let cutoff = store.horizon().forget_cutoff(now).unwrap();
        assert_eq!(cutoff, now - 10 * minute);
        let mut batch = store.batch();
        put_horizon(&store, &mut batch, cutoff);
        store.commit(batch, true).unwrap();
        store.horizon().forgotten_before_written(cutoff);
        drop(store);
        // A tool started with a one-minute horizon keeps moving it ten minutes behind.
        let store = Store::open(dir.path(), &options(Duration::from_secs(60))).unwrap();
        assert_eq!(
            store.horizon().forget_cutoff(now + minute),
            Some(now - 9 * minute)
        );
    }

    #[test]
    fn the_log_bottom_compression_options_parse() {
        assert!(
            Options::default()
                .get_options_from_string(LOG_BOTTOM_COMPRESSION)
                .is_ok()
        );
    }

    #[test]
    fn refuses_a_directory_with_table_files_but_no_current() {
        let dir = tempfile::tempdir().unwrap();
        let options = options(Duration::from_secs(60));
        // Unrelated files (the operator token) do not make a store.
        std::fs::write(dir.path().join("admin-token"), "x").unwrap();
        drop(Store::open(dir.path(), &options).unwrap());
        std::fs::remove_file(dir.path().join("CURRENT")).unwrap();
        for open in [Store::open, Store::open_read_only] {
            let Err(error) = open(dir.path(), &options) else {
                panic!("a store without CURRENT opened");
            };
            let message = error.to_string();
            assert!(
                matches!(error, StoreError::IncompleteCopy { .. })
                    && message.contains("MANIFEST-")
                    && message.contains("no CURRENT"),
                "{message}"
            );
        }
        assert!(!dir.path().join("CURRENT").exists(), "nothing was created");

        let only_tables = tempfile::tempdir().unwrap();
        std::fs::write(only_tables.path().join("000012.sst"), "x").unwrap();
        let error = Store::open(only_tables.path(), &options).err().unwrap();
        assert!(error.to_string().contains("000012.sst"), "{error}");
    }
}
