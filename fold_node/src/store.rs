//! The SQLite file: where it lives, how connections are opened, and the table layout.
//!
//! # Layout
//!
//! Records of every schema live in one generic table keyed by a schema number (`sid`), so
//! no schema or field name is ever used to build a path or a table name:
//!
//! ```sql
//! schemas  (sid INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, def TEXT, created_at, created_by)
//! records  (sid, id, version, data BLOB /* JSONB of the non-null fields */,
//!           created_at, created_by, updated_at, updated_by, PRIMARY KEY (sid, id))
//! versions (sid, id, version, action, ts, writer, data TEXT /* JSON, NULL for a delete */,
//!           PRIMARY KEY (sid, id, version))
//! usage    (writer TEXT PRIMARY KEY, bytes, records, versions)
//! ```
//!
//! `usage` is what each writer's records take, kept by every write in the write's own
//! transaction (see `usage`): `bytes` is the sum of the JSON text lengths of the
//! kept versions the writer wrote, `versions` their number, `records` the live records it
//! created. Layout 1 had no `usage`; it is counted from the other tables when a layout-1
//! database is opened (layout 2).
//!
//! An indexed field gets a partial expression index, `ON records(json_extract(data,'$.f'), id)
//! WHERE sid = N` (created with the schema). `sid`s come from `AUTOINCREMENT`, so a number is
//! never reused, even after its schema is deleted.

use crate::budget::{self, Meter};
use crate::error::NodeError;
use rusqlite::{Connection, OpenFlags};
use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "fold_node.sqlite3";

/// The layout version this build writes (`PRAGMA user_version`).
const LAYOUT_VERSION: i64 = 2;

/// How long a connection waits for another one's lock (for example an admin command
/// writing beside a running node) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of the database file each connection reads through `mmap` instead of `read`
/// calls; the OS page cache then serves every connection without copies.
const MMAP_SIZE: i64 = 256 * 1024 * 1024;

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 256;

const LAYOUT: &str = "
CREATE TABLE IF NOT EXISTS schemas (
    sid INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    def TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    sid INTEGER NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    data BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (sid, id)
);
CREATE TABLE IF NOT EXISTS versions (
    sid INTEGER NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    action TEXT NOT NULL,
    ts INTEGER NOT NULL,
    writer TEXT NOT NULL,
    data TEXT,
    PRIMARY KEY (sid, id, version)
);
CREATE TABLE IF NOT EXISTS usage (
    writer TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL,
    records INTEGER NOT NULL,
    versions INTEGER NOT NULL
);
";

/// How hard a commit works to survive failures.
///
/// Either way, a write is acknowledged only after its transaction has committed, and the
/// database is in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=FULL`: every commit fsyncs the WAL before it returns, so an
    /// acknowledged write survives a process kill, an OS crash and a power cut. The default.
    #[default]
    Full,
    /// `synchronous=NORMAL`: the WAL is fsynced only at checkpoints. An acknowledged write
    /// survives the process being killed (the OS still holds it), but the last commits may
    /// be lost if the machine itself goes down.
    Normal,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }
}

/// Creates `dir` (mode 0700) if needed and refuses one that other users can reach.
///
/// # Errors
///
/// [`NodeError::Io`] when it cannot be created or inspected, [`NodeError::InsecureDir`]
/// when it has group or other permission bits.
pub fn ensure_private_dir(dir: &Path) -> Result<(), NodeError> {
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| NodeError::io("cannot create directory", dir, e))?;
    }
    let meta =
        std::fs::metadata(dir).map_err(|e| NodeError::io("cannot inspect directory", dir, e))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(NodeError::InsecureDir {
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// The database path inside `data_dir`; creates the directory (0700) and an empty 0600
/// database file if they are missing, so SQLite's WAL and shared-memory files inherit
/// the private mode.
pub(crate) fn prepare_db_file(data_dir: &Path) -> Result<PathBuf, NodeError> {
    ensure_private_dir(data_dir)?;
    let path = data_dir.join(DB_FILE);
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| NodeError::io("cannot create database file", &path, e))?;
    Ok(path)
}

/// Opens a connection with the node's settings. `writer` connections also create or
/// check the layout.
pub(crate) fn open(
    path: &Path,
    durability: Durability,
    writer: bool,
) -> Result<Connection, NodeError> {
    open_metered(path, durability, writer).map(|(conn, _)| conn)
}

/// [`open`], with the [`Meter`] its `contains` function counts into (see [`crate::budget`]).
pub(crate) fn open_metered(
    path: &Path,
    durability: Durability,
    writer: bool,
) -> Result<(Connection, Arc<Meter>), NodeError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let mut conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(NodeError::Corrupt(format!(
            "cannot switch the database to WAL mode (got {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", durability.pragma())?;
    conn.pragma_update(None, "mmap_size", MMAP_SIZE)?;
    let meter = Meter::unlimited();
    budget::register(&conn, Arc::clone(&meter))?;
    if writer {
        migrate(&mut conn)?;
    } else {
        conn.pragma_update(None, "query_only", true)?;
    }
    Ok((conn, meter))
}

fn migrate(conn: &mut Connection) -> Result<(), NodeError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > LAYOUT_VERSION {
        return Err(NodeError::UnsupportedLayout {
            found,
            supported: LAYOUT_VERSION,
        });
    }
    tx.execute_batch(LAYOUT)?;
    if found < 2 {
        // Layout 1 kept no usage: count it (an empty table for a new database).
        crate::usage::recount(&tx)?;
    }
    tx.pragma_update(None, "user_version", LAYOUT_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
