//! Saving a virtual card's persistent state in a directory, atomically.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::state::PersistentState;

/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "virtual-piv-card.json";

/// Why state could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The state file exists but is not valid card state.
    #[error("state file {path} is not valid card state: {source}")]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The state could not be encoded.
    #[error("card state does not encode: {0}")]
    Encode(#[source] serde_json::Error),
}

/// A directory holding one card's state file.
///
/// Saving writes a temporary file, flushes it to disk and renames it over the state file, so
/// a crash or kill at any moment leaves either the old or the new state, never a torn one.
/// The file is readable by its owner only: it holds the card's PIN, PUK and keys.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Uses `dir`, creating it if needed.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            action: "creating state directory",
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The saved state, or `None` when nothing was saved yet.
    pub fn load(&self) -> Result<Option<PersistentState>, StoreError> {
        let path = self.path();
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    action: "opening",
                    path,
                    source,
                });
            }
        };
        let mut bytes = Zeroizing::new(Vec::new());
        file.read_to_end(&mut bytes)
            .map_err(|source| StoreError::Io {
                action: "reading",
                path: path.clone(),
                source,
            })?;
        PersistentState::from_json(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Corrupt { path, source })
    }

    /// Replaces the saved state atomically and durably.
    pub fn save(&self, state: &PersistentState) -> Result<(), StoreError> {
        let bytes = state.to_json().map_err(StoreError::Encode)?;
        let path = self.path();
        let temporary = self.dir.join(format!("{STATE_FILE}.tmp"));
        write_synced(&temporary, &bytes).map_err(|source| StoreError::Io {
            action: "writing",
            path: temporary.clone(),
            source,
        })?;
        fs::rename(&temporary, &path).map_err(|source| StoreError::Io {
            action: "renaming into",
            path,
            source,
        })?;
        // The rename is durable only once the directory entry is on disk.
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| StoreError::Io {
                action: "syncing",
                path: self.dir.clone(),
                source,
            })
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::piv::CardOptions;

    #[test]
    fn saved_state_loads_back_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path().join("card")).unwrap();
        assert!(store.load().unwrap().is_none());
        let state = PersistentState::factory(CardOptions::with_serial(99)).unwrap();
        store.save(&state).unwrap();
        store.save(&state).unwrap();
        let loaded = store.load().unwrap().unwrap();
        assert_eq!(loaded.options(), state.options());
        let names: Vec<_> = fs::read_dir(dir.path().join("card"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [STATE_FILE]);
        let mode = fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "secrets are readable by the owner only"
        );
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        fs::write(store.path(), b"{not json").unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }));
        assert!(err.to_string().contains(STATE_FILE), "{err}");
    }
}
