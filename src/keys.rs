//! `cardfleet keys`: key rotation of credentials at rest and management-key
//! derivation, run with the server's configuration directly on its database
//! (like `cardfleet migrate`), or on a standalone data directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use cardfleet_schemas::profile::ManagementKeyAlgorithm;

use crate::credentials::{ManagementKeyKdf, MasterKey};
use crate::settings::Settings;
use crate::store::Store;

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Re-encrypt every stored credential that is under a previous key
    /// (credentials.previous_keys) under the current key
    /// (credentials.key_id); safe while the system runs, and idempotent.
    Rotate {
        /// Use a standalone data directory's database and keys.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Rows per transaction.
        #[arg(long, default_value_t = 1000)]
        batch_size: i64,
    },
    /// Print a card's PIV management key, derived from credentials.master_key
    /// (see the README's KDF). The output is a secret: it unlocks the card.
    ManagementKey {
        /// The chip serial, exactly as imported.
        #[arg(long)]
        chip_serial: String,
        #[arg(long, value_enum, default_value = "aes192")]
        algorithm: KeyAlgorithm,
        /// The card's management-key KDF version (`management_key_kdf` in
        /// the card listing): 1 for cards imported before version 2 existed.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
        kdf: u8,
        /// Use a standalone data directory's keys.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// Management key algorithms as the command line names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyAlgorithm {
    Aes192,
    #[value(name = "3des")]
    TripleDes,
    Aes128,
    Aes256,
}

impl From<KeyAlgorithm> for ManagementKeyAlgorithm {
    fn from(a: KeyAlgorithm) -> Self {
        match a {
            KeyAlgorithm::Aes192 => ManagementKeyAlgorithm::Aes192,
            KeyAlgorithm::TripleDes => ManagementKeyAlgorithm::TripleDes,
            KeyAlgorithm::Aes128 => ManagementKeyAlgorithm::Aes128,
            KeyAlgorithm::Aes256 => ManagementKeyAlgorithm::Aes256,
        }
    }
}

fn settings(config: Option<&Path>, data_dir: Option<&Path>) -> anyhow::Result<Settings> {
    Ok(match data_dir {
        Some(dir) => {
            let defaults = crate::data_dir::data_dir_defaults(dir)?;
            Settings::load_layered(config, &defaults, &[])?
        }
        None => Settings::load(config)?,
    })
}

pub async fn run(config: Option<&Path>, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Rotate {
            data_dir,
            batch_size,
        } => {
            if batch_size < 1 {
                bail!("--batch-size must be at least 1");
            }
            let settings = settings(config, data_dir.as_deref())?;
            let store = Store::connect(&settings.database.url, 2, false)
                .await
                .context("cannot connect to the database (database.url)")?;
            let report = rotate(&store, &settings, batch_size).await?;
            println!("{report}");
            if !report.unreadable.is_empty() {
                bail!(
                    "rows remain under key ids that are neither credentials.key_id nor in \
                     credentials.previous_keys: {}",
                    report
                        .unreadable
                        .iter()
                        .map(|(id, n)| format!("{id} ({n})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok(())
        }
        KeysCommand::ManagementKey {
            chip_serial,
            algorithm,
            kdf,
            data_dir,
        } => {
            let settings = settings(config, data_dir.as_deref())?;
            let key = management_key(
                &settings.credentials.master_key,
                &chip_serial,
                algorithm,
                kdf,
            )?;
            eprintln!(
                "management key of chip {chip_serial} ({}): a secret that unlocks the card; \
                 do not store or paste it anywhere",
                ManagementKeyAlgorithm::from(algorithm).as_str()
            );
            println!("{key}");
            Ok(())
        }
    }
}

/// The hex management key of `chip_serial` under `master_key_hex`.
pub fn management_key(
    master_key_hex: &str,
    chip_serial: &str,
    algorithm: KeyAlgorithm,
    kdf: u8,
) -> anyhow::Result<String> {
    if chip_serial.is_empty() {
        bail!("--chip-serial must not be empty");
    }
    let kdf = ManagementKeyKdf::from_number(kdf.into())
        .ok_or_else(|| anyhow::anyhow!("--kdf must be 1 or 2"))?;
    let master = MasterKey::from_hex(master_key_hex)?;
    Ok(master
        .derive_management_key_with(kdf, chip_serial, algorithm.into())
        .expose()
        .to_owned())
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    pub key_id: String,
    pub rotated: usize,
    pub batches: usize,
    /// Rows per key id before and after.
    pub before: Vec<(String, i64)>,
    pub after: Vec<(String, i64)>,
    /// Rows under key ids the keyring does not know (left as they are).
    pub unreadable: Vec<(String, i64)>,
}

impl std::fmt::Display for RotationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts = |c: &[(String, i64)]| {
            if c.is_empty() {
                "none".to_owned()
            } else {
                c.iter()
                    .map(|(id, n)| format!("{id}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        writeln!(f, "credentials by key before: {}", counts(&self.before))?;
        writeln!(
            f,
            "re-encrypted {} rows under key {} in {} batches",
            self.rotated, self.key_id, self.batches
        )?;
        write!(f, "credentials by key after: {}", counts(&self.after))
    }
}

/// Re-encrypts, batch by batch, every credential under a previous key.
/// A batch that meets a transient conflict (deadlock, lock timeout, busy
/// SQLite) is tried again.
pub async fn rotate(
    store: &Store,
    settings: &Settings,
    batch_size: i64,
) -> anyhow::Result<RotationReport> {
    let cipher = settings.credentials.cipher()?;
    let before = store.credential_key_counts().await?;
    let actor = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    let (mut rotated, mut batches, mut tries) = (0usize, 0usize, 0u32);
    loop {
        match store.rotate_credentials(&cipher, batch_size, &actor).await {
            Ok(0) => break,
            Ok(n) => {
                rotated += n;
                batches += 1;
                tries = 0;
            }
            Err(e) if e.is_transient() && tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50 << tries)).await;
            }
            Err(e) => return Err(e).context("re-encrypting credentials"),
        }
    }
    let after = store.credential_key_counts().await?;
    let known = cipher.previous_key_ids();
    let unreadable = after
        .iter()
        .filter(|(id, _)| id != cipher.key_id() && !known.contains(id))
        .cloned()
        .collect();
    Ok(RotationReport {
        key_id: cipher.key_id().to_owned(),
        rotated,
        batches,
        before,
        after,
        unreadable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_management_key_is_the_documented_kdf_vector() {
        // The README's test vector: master key 0x11 × 32, chip CHIP-1.
        let master = "11".repeat(32);
        assert_eq!(
            management_key(&master, "CHIP-1", KeyAlgorithm::Aes192, 1).ok(),
            Some("636a159cffefc12cfdc2a0430a43a4094f71f9e2f1ddf5dd".to_owned())
        );
        assert_eq!(
            management_key(&master, "CHIP-1", KeyAlgorithm::Aes128, 1).ok(),
            Some("636a159cffefc12cfdc2a0430a43a409".to_owned())
        );
        assert_eq!(
            management_key(&master, "CHIP-1", KeyAlgorithm::Aes192, 2).ok(),
            Some("c1f0f873cdc1034010b395832d13ed174ffc7c0ae50d43c1".to_owned())
        );
        assert!(management_key(&master, "CHIP-1", KeyAlgorithm::Aes192, 3).is_err());
        assert!(management_key(&master, "", KeyAlgorithm::Aes192, 2).is_err());
        assert!(management_key("abcd", "CHIP-1", KeyAlgorithm::Aes192, 2).is_err());
    }
}
