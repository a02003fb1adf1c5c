//! Where the journal lives when the card cannot keep it: a [`JournalKeeper`] on the
//! worker, one durable record per chip. Many PIV cards refuse vendor data objects
//! (`6A80`/`6A82` for `5FFF10`); the engine then writes the same journal encoding here,
//! before and after every credential change, exactly as it would on the card.
//!
//! [`DirJournalKeeper`] writes one file per chip (`<chip>.journal`) with write to a
//! temporary file, `fsync`, rename and `fsync` of the directory, so a worker killed at any
//! instant leaves the old or the new record, never a torn one. The journal holds no secret.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why the keeper could not read or write a journal.
#[derive(Debug, thiserror::Error)]
#[error("worker journal for chip {chip}: {message}")]
pub struct KeeperError {
    chip: String,
    message: String,
}

impl KeeperError {
    fn new(chip: &str, message: impl fmt::Display) -> Self {
        Self {
            chip: chip.to_owned(),
            message: message.to_string(),
        }
    }
}

/// Durable storage for the journals of cards that keep none themselves, keyed by chip serial.
pub trait JournalKeeper: Send + Sync + fmt::Debug {
    /// The journal's encoding for this chip, if one is kept.
    fn load(&self, chip_serial: &str) -> Result<Option<Vec<u8>>, KeeperError>;
    /// Stores the encoding durably: when this returns, a crash does not lose it.
    fn store(&self, chip_serial: &str, encoded: &[u8]) -> Result<(), KeeperError>;
    /// Forgets the chip's journal (absent is fine).
    fn remove(&self, chip_serial: &str) -> Result<(), KeeperError>;
}

/// Journals as files in one directory of the worker's disk.
#[derive(Debug, Clone)]
pub struct DirJournalKeeper {
    dir: PathBuf,
}

impl DirJournalKeeper {
    /// Uses `dir`, created at the first store if it does not exist.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Uses `dir` and creates it now, so that a worker fails at start, not at its first card.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let keeper = Self::new(dir);
        fs::create_dir_all(&keeper.dir)?;
        Ok(keeper)
    }

    /// The directory the journals are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of one chip. Chip serials are decimal or hex; anything else is escaped so
    /// that a serial can never name a path outside the directory.
    fn path(&self, chip_serial: &str) -> Result<PathBuf, KeeperError> {
        if chip_serial.is_empty() || chip_serial.len() > 128 {
            return Err(KeeperError::new(chip_serial, "not a usable chip serial"));
        }
        let name: String = chip_serial
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        Ok(self.dir.join(format!("{name}.journal")))
    }
}

impl JournalKeeper for DirJournalKeeper {
    fn load(&self, chip_serial: &str) -> Result<Option<Vec<u8>>, KeeperError> {
        let path = self.path(chip_serial)?;
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(KeeperError::new(chip_serial, e)),
        }
    }

    fn store(&self, chip_serial: &str, encoded: &[u8]) -> Result<(), KeeperError> {
        let path = self.path(chip_serial)?;
        let temporary = path.with_extension("journal.tmp");
        let fail = |e: std::io::Error| KeeperError::new(chip_serial, e);
        fs::create_dir_all(&self.dir).map_err(fail)?;
        let mut file = fs::File::create(&temporary).map_err(fail)?;
        file.write_all(encoded).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        drop(file);
        fs::rename(&temporary, &path).map_err(fail)?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(fail)
    }

    fn remove(&self, chip_serial: &str) -> Result<(), KeeperError> {
        let path = self.path(chip_serial)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(KeeperError::new(chip_serial, e)),
        }
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| KeeperError::new(chip_serial, e))
    }
}

/// Journals in memory: for the simulated rack and tests, where the worker's life is the
/// card's.
#[derive(Debug, Default)]
pub struct MemoryJournalKeeper {
    journals: Mutex<HashMap<String, Vec<u8>>>,
}

impl MemoryJournalKeeper {
    fn with<T>(&self, body: impl FnOnce(&mut HashMap<String, Vec<u8>>) -> T) -> T {
        let mut guard = match self.journals.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        body(&mut guard)
    }
}

impl JournalKeeper for MemoryJournalKeeper {
    fn load(&self, chip_serial: &str) -> Result<Option<Vec<u8>>, KeeperError> {
        Ok(self.with(|j| j.get(chip_serial).cloned()))
    }

    fn store(&self, chip_serial: &str, encoded: &[u8]) -> Result<(), KeeperError> {
        self.with(|j| j.insert(chip_serial.to_owned(), encoded.to_vec()));
        Ok(())
    }

    fn remove(&self, chip_serial: &str) -> Result<(), KeeperError> {
        self.with(|j| j.remove(chip_serial));
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_keeper_stores_loads_and_removes_per_chip() {
        let dir = tempfile::tempdir().unwrap();
        let keeper = DirJournalKeeper::open(dir.path().join("journals")).unwrap();
        assert_eq!(keeper.load("4022119").unwrap(), None);
        keeper.store("4022119", b"one").unwrap();
        keeper.store("4022119", b"two").unwrap();
        keeper.store("ABCDEF", b"other").unwrap();
        // A second keeper on the same directory (a restarted worker) sees the same.
        let again = DirJournalKeeper::open(keeper.dir()).unwrap();
        assert_eq!(again.load("4022119").unwrap().as_deref(), Some(&b"two"[..]));
        again.remove("4022119").unwrap();
        again.remove("4022119").unwrap();
        assert_eq!(keeper.load("4022119").unwrap(), None);
        assert_eq!(
            keeper.load("ABCDEF").unwrap().as_deref(),
            Some(&b"other"[..])
        );
    }

    #[test]
    fn a_chip_serial_cannot_leave_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let keeper = DirJournalKeeper::open(dir.path()).unwrap();
        keeper.store("../../etc/x", b"j").unwrap();
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["______etc_x.journal".to_owned()]);
        assert!(keeper.store("", b"j").is_err());
    }
}
