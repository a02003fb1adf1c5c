//! The verdict of a chaos run: every card's state against its job and its
//! chip (each chip's persisted state, with the escrowed PIN decrypted as the
//! control plane does and VERIFIED on the chip), and a scan for plaintext
//! secrets in logs, broker messages and a dump of the database.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use cardfleet::credentials::{CredentialCipher, MasterKey, Sealed};
use cardfleet_schemas::profile::ManagementKeyAlgorithm;
use cardfleet_worker::piv::{CardOptions, FACTORY_PIN, StateStore, VirtualPivCard};
use uuid::Uuid;

/// What every card of the batch came to.
#[derive(Debug, Default)]
pub struct CardVerdicts {
    pub found: usize,
    pub by_state: BTreeMap<String, u64>,
    pub by_job_state: BTreeMap<String, u64>,
    /// Cards not initialized and not cancelled untouched: missing from the
    /// store, `failed`, back in `produced` without a cancelled job, or in
    /// `produced` with a chip that no longer takes the factory PIN.
    pub lost: Vec<String>,
    /// Cards still `initializing` or `in_doubt`, and jobs not finished.
    pub stuck: Vec<String>,
    pub unfinished_jobs: u64,
    /// Cards whose chip does not take the PIN their state says it holds.
    pub pin_mismatch: Vec<String>,
    pub chips_checked: usize,
    pub chips_with_escrowed_pin: usize,
    pub chips_untouched: usize,
    /// Cancelled cards: never touched (back in produced) or the result won.
    pub cancelled_untouched: u64,
    pub cancel_result_won: u64,
    pub dead_letters: i64,
}

#[derive(Debug, sqlx::FromRow)]
struct CardRow {
    id: Uuid,
    chip_serial: String,
    state: String,
    job_state: Option<String>,
    cancel_requested: bool,
}

#[derive(Debug, sqlx::FromRow)]
struct CredentialRow {
    job_id: Uuid,
    card_id: Uuid,
    key_id: String,
    pin_nonce: Vec<u8>,
    pin_ct: Vec<u8>,
    puk_nonce: Vec<u8>,
    puk_ct: Vec<u8>,
    status: String,
    chip_serial: String,
}

/// Plaintext secrets of one card, as the control plane escrowed them.
#[derive(Debug, Clone, Default)]
pub struct CardSecrets {
    pub card_id: Uuid,
    pub chip_serial: String,
    pub job_ids: Vec<Uuid>,
    pub pins: Vec<String>,
    pub puks: Vec<String>,
    pub management_keys: Vec<String>,
}

/// The escrow of every card, decrypted; `active` holds the PIN of each
/// card's active (else latest) credentials.
pub struct Escrow {
    pub cards: HashMap<Uuid, CardSecrets>,
    pub current_pin: HashMap<Uuid, (String, String)>,
}

pub async fn read_escrow(
    pool: &sqlx::PgPool,
    encryption_key: &str,
    master_key: &str,
) -> anyhow::Result<Escrow> {
    let cipher = CredentialCipher::from_hex("k1", encryption_key)?;
    let master = MasterKey::from_hex(master_key)?;
    let rows: Vec<CredentialRow> = sqlx::query_as(
        "SELECT cr.job_id, cr.card_id, cr.key_id, cr.pin_nonce, cr.pin_ct, cr.puk_nonce, cr.puk_ct,
                cr.status, c.chip_serial
         FROM credentials cr JOIN cards c ON c.id = cr.card_id
         ORDER BY cr.created_at",
    )
    .fetch_all(pool)
    .await?;
    let mut cards: HashMap<Uuid, CardSecrets> = HashMap::new();
    let mut current_pin: HashMap<Uuid, (String, String)> = HashMap::new();
    for row in rows {
        let open = |nonce: &[u8], ct: &[u8], field: &str| {
            cipher
                .open(
                    &row.key_id,
                    &Sealed {
                        nonce: nonce.to_vec(),
                        ciphertext: ct.to_vec(),
                    },
                    &cardfleet::store::initialize::credential_context(row.job_id, field),
                )
                .map(|s| s.expose().to_owned())
        };
        let pin = open(&row.pin_nonce, &row.pin_ct, "pin")
            .with_context(|| format!("escrowed PIN of job {} does not decrypt", row.job_id))?;
        let puk = open(&row.puk_nonce, &row.puk_ct, "puk")
            .with_context(|| format!("escrowed PUK of job {} does not decrypt", row.job_id))?;
        let entry = cards.entry(row.card_id).or_insert_with(|| CardSecrets {
            card_id: row.card_id,
            chip_serial: row.chip_serial.clone(),
            management_keys: [
                ManagementKeyAlgorithm::Aes192,
                ManagementKeyAlgorithm::TripleDes,
            ]
            .into_iter()
            .map(|a| {
                master
                    .derive_management_key(&row.chip_serial, a)
                    .expose()
                    .to_owned()
            })
            .collect(),
            ..Default::default()
        });
        entry.job_ids.push(row.job_id);
        entry.pins.push(pin.clone());
        entry.puks.push(puk);
        // Rows come oldest first: the active one wins, else the latest.
        let keep = current_pin
            .get(&row.card_id)
            .is_none_or(|(status, _)| status != "active");
        if keep {
            current_pin.insert(row.card_id, (row.status.clone(), pin));
        }
    }
    Ok(Escrow { cards, current_pin })
}

/// The chip of `serial` as its state was last persisted, or a factory-fresh
/// chip when it never reached a slot.
fn chip(state_dir: &Path, serial: &str) -> anyhow::Result<VirtualPivCard> {
    let dir = state_dir.join(serial);
    if dir.join(cardfleet_worker::piv::STATE_FILE).exists() {
        let store = StateStore::open(&dir)?;
        if let Some(state) = store.load()? {
            return Ok(VirtualPivCard::from_state(state));
        }
    }
    let number: u32 = serial
        .parse()
        .with_context(|| format!("chip serial {serial} is not a decimal 32-bit number"))?;
    Ok(VirtualPivCard::new(CardOptions::with_serial(number))?)
}

/// SELECT the PIV applet and VERIFY `pin` (padded to 8 bytes with FF), on a
/// copy of the chip in memory: a wrong guess costs the persisted chip nothing.
pub fn pin_verifies(card: &mut VirtualPivCard, pin: &str) -> bool {
    card.reset();
    card.process(&[0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08]);
    let mut data = pin.as_bytes().to_vec();
    data.resize(8, 0xFF);
    let mut verify = vec![0x00, 0x20, 0x00, 0x80, 0x08];
    verify.extend_from_slice(&data);
    card.process(&verify).ends_with(&[0x90, 0x00])
}

/// Checks every card of `batch` and every chip.
pub async fn check_cards(
    pool: &sqlx::PgPool,
    batch: Uuid,
    expected_serials: &[String],
    escrow: &Escrow,
    state_dir: &Path,
) -> anyhow::Result<CardVerdicts> {
    let rows: Vec<CardRow> = sqlx::query_as(
        "SELECT c.id, c.chip_serial, c.state, j.state AS job_state,
                (j.cancel_requested_at IS NOT NULL) AS cancel_requested
         FROM cards c LEFT JOIN jobs j ON j.card_id = c.id AND j.batch_id = $1",
    )
    .bind(batch)
    .fetch_all(pool)
    .await?;
    let mut v = CardVerdicts {
        dead_letters: sqlx::query_scalar("SELECT count(*) FROM dead_letters")
            .fetch_one(pool)
            .await?,
        ..Default::default()
    };
    let by_serial: HashMap<&str, &CardRow> =
        rows.iter().map(|r| (r.chip_serial.as_str(), r)).collect();
    for serial in expected_serials {
        let Some(row) = by_serial.get(serial.as_str()) else {
            v.lost.push(format!("chip {serial}: no card in the store"));
            continue;
        };
        v.found += 1;
        *v.by_state.entry(row.state.clone()).or_default() += 1;
        let job_state = row.job_state.clone().unwrap_or_else(|| "(no job)".into());
        *v.by_job_state.entry(job_state.clone()).or_default() += 1;
        if !matches!(job_state.as_str(), "succeeded" | "failed" | "cancelled") {
            v.unfinished_jobs += 1;
        }
        let label = format!("card {} (chip {serial}, job {job_state})", row.id);
        let mut card = chip(state_dir, serial)?;
        v.chips_checked += 1;
        let escrowed = escrow.current_pin.get(&row.id).map(|(_, pin)| pin.as_str());
        let takes_escrow = escrowed.is_some_and(|pin| pin_verifies(&mut card, pin));
        let takes_factory = pin_verifies(&mut card, FACTORY_PIN);
        if takes_escrow {
            v.chips_with_escrowed_pin += 1;
        }
        if takes_factory {
            v.chips_untouched += 1;
        }
        let cancelled = job_state == "cancelled" || row.cancel_requested;
        match row.state.as_str() {
            "unassigned" => {
                if !takes_escrow {
                    v.pin_mismatch.push(format!(
                        "{label}: unassigned but the chip does not take its escrowed PIN"
                    ));
                }
                if cancelled {
                    v.cancel_result_won += 1;
                }
            }
            "produced" => {
                if job_state != "cancelled" {
                    v.lost
                        .push(format!("{label}: back in produced without a cancelled job"));
                } else if !takes_factory {
                    v.lost.push(format!(
                        "{label}: cancelled, but the chip no longer takes the factory PIN{}",
                        if takes_escrow {
                            " (it holds the escrowed credentials)"
                        } else {
                            ""
                        }
                    ));
                } else {
                    v.cancelled_untouched += 1;
                }
            }
            "initializing" => v.stuck.push(format!("{label}: still initializing")),
            "in_doubt" => {
                v.stuck
                    .push(format!("{label}: in_doubt, waiting for an operator"));
                if !takes_escrow && !takes_factory {
                    v.pin_mismatch.push(format!(
                        "{label}: in_doubt and the chip takes neither the escrowed nor the factory PIN"
                    ));
                }
            }
            other => v.lost.push(format!("{label}: {other}")),
        }
    }
    Ok(v)
}

/// Plaintext secrets found, per place.
#[derive(Debug, Default)]
pub struct Leaks {
    pub scanned: BTreeMap<&'static str, (u64, u64)>,
    pub found: BTreeMap<&'static str, Vec<String>>,
}

impl Leaks {
    pub fn total(&self) -> usize {
        self.found.values().map(Vec::len).sum()
    }
}

/// Finds secrets in text: long secrets (management keys, PIN and PUK as
/// the hex of their padded APDU data, the run's root keys and token
/// secrets) anywhere; a PIN or PUK as a word only where the same line,
/// message or row names its card (id, job id or chip serial), since six
/// random digits alone occur by chance in any large log.
pub struct Scanner {
    hex: HashMap<String, String>,
    hex_lengths: Vec<usize>,
    by_id: HashMap<String, usize>,
    cards: Vec<CardSecrets>,
}

impl Scanner {
    pub fn new(escrow: &Escrow, root_secrets: &[(&str, String)]) -> Self {
        let mut hex = HashMap::new();
        let mut by_id = HashMap::new();
        let mut cards = Vec::new();
        for (i, c) in escrow.cards.values().enumerate() {
            by_id.insert(c.card_id.to_string(), i);
            by_id.insert(c.chip_serial.clone(), i);
            for job in &c.job_ids {
                by_id.insert(job.to_string(), i);
            }
            for key in &c.management_keys {
                hex.insert(
                    key.to_lowercase(),
                    format!("management key of chip {}", c.chip_serial),
                );
            }
            for pin in &c.pins {
                let mut data = pin.as_bytes().to_vec();
                data.resize(8, 0xFF);
                hex.insert(
                    hex::encode(&data),
                    format!("PIN of chip {} (APDU hex)", c.chip_serial),
                );
            }
            for puk in &c.puks {
                let mut data = puk.as_bytes().to_vec();
                data.resize(8, 0xFF);
                hex.insert(
                    hex::encode(&data),
                    format!("PUK of chip {} (APDU hex)", c.chip_serial),
                );
            }
            cards.push(c.clone());
        }
        for (what, secret) in root_secrets {
            let s = secret.trim_start_matches("cf_").to_lowercase();
            hex.insert(s, (*what).to_owned());
        }
        let mut hex_lengths: Vec<usize> = hex.keys().map(String::len).collect();
        hex_lengths.sort_unstable();
        hex_lengths.dedup();
        Self {
            hex,
            hex_lengths,
            by_id,
            cards,
        }
    }

    /// What `text` (one line, message or row) gives away.
    pub fn scan(&self, text: &str) -> Vec<String> {
        let text = &strip_ansi(text);
        let mut found = Vec::new();
        let lower = text.to_ascii_lowercase();
        let bytes = lower.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if !bytes[i].is_ascii_hexdigit() {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_hexdigit() {
                i += 1;
            }
            let run = &lower[start..i];
            for &len in &self.hex_lengths {
                if run.len() < len {
                    break;
                }
                for w in 0..=run.len() - len {
                    if let Some(what) = self.hex.get(&run[w..w + len]) {
                        found.push(what.clone());
                    }
                }
            }
        }
        // A dot inside a word keeps it whole: the fraction of a duration
        // or a timestamp (`0.493817`) is not a six-digit word.
        let words: Vec<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
            .map(|w| w.trim_matches('.'))
            .filter(|w| !w.is_empty())
            .collect();
        let named: HashSet<usize> = words
            .iter()
            .filter_map(|w| self.by_id.get(*w).copied())
            .collect();
        for i in named {
            let card = &self.cards[i];
            for w in &words {
                if card.pins.iter().any(|p| p == w) {
                    found.push(format!("PIN of chip {} beside its card", card.chip_serial));
                }
                if card.puks.iter().any(|p| p == w) {
                    found.push(format!("PUK of chip {} beside its card", card.chip_serial));
                }
            }
        }
        found
    }
}

/// `text` without terminal colour sequences (ESC [ … letter), which
/// would otherwise glue a value to the code before it.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Scans the files (line by line) of one place.
pub fn scan_files(scanner: &Scanner, leaks: &mut Leaks, place: &'static str, files: &[PathBuf]) {
    let mut lines = 0u64;
    let mut bytes = 0u64;
    for file in files {
        let Ok(data) = std::fs::read(file) else {
            continue;
        };
        bytes += data.len() as u64;
        for line in String::from_utf8_lossy(&data).lines() {
            lines += 1;
            for what in scanner.scan(line) {
                leaks
                    .found
                    .entry(place)
                    .or_default()
                    .push(format!("{}: {what}", file.display()));
            }
        }
    }
    let entry = leaks.scanned.entry(place).or_default();
    entry.0 += lines;
    entry.1 += bytes;
}

/// Every regular file under `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if path.is_file() {
            out.push(path);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn escrow() -> Escrow {
        let card = CardSecrets {
            card_id: Uuid::nil(),
            chip_serial: "3500000001".into(),
            job_ids: vec![Uuid::from_u128(7)],
            pins: vec!["493817".into()],
            puks: vec!["12093847".into()],
            management_keys: vec!["00112233445566778899aabbccddeeff0011223344556677".into()],
        };
        Escrow {
            cards: HashMap::from([(card.card_id, card)]),
            current_pin: HashMap::new(),
        }
    }

    #[test]
    fn the_scanner_finds_each_shape_of_leak_and_not_a_lone_number() {
        let s = Scanner::new(
            &escrow(),
            &[("API token", "cf_".to_owned() + &"ab".repeat(32))],
        );
        assert!(
            s.scan("job 00000000-0000-0000-0000-000000000007 pin=493817")
                .len()
                == 1
        );
        assert!(s.scan("chip 3500000001 puk \"12093847\"").len() == 1);
        assert_eq!(s.scan("apdu 0020008008343933383137ffff").len(), 1);
        assert_eq!(
            s.scan("key 00112233445566778899AABBCCDDEEFF0011223344556677 set")
                .len(),
            1
        );
        assert_eq!(s.scan(&format!("Bearer cf_{}", "ab".repeat(32))).len(), 1);
        // Colour codes around a field's value hide nothing.
        assert_eq!(
            s.scan(
                "\u{1b}[3mchip\u{1b}[0m=3500000001 \u{1b}[3mpin\u{1b}[0m\u{1b}[2m=\u{1b}[0m493817"
            )
            .len(),
            1
        );
        // A duration's fraction beside the card's chip is not its PIN.
        assert!(
            s.scan(r#"{"detail": "chip 3500000001", "duration_ms": 0.493817}"#)
                .is_empty()
        );
        assert_eq!(s.scan("chip 3500000001: pin 493817.").len(), 1);
        // Six digits with no card named are a timestamp's, not a leak.
        assert!(
            s.scan("2026-12-06T05:17:11.493817Z took 12093847 ns")
                .is_empty()
        );
    }

    #[test]
    fn a_pin_verifies_only_on_the_chip_that_holds_it() {
        let mut card = VirtualPivCard::new(CardOptions::with_serial(42)).unwrap();
        assert!(pin_verifies(&mut card, FACTORY_PIN));
        assert!(!pin_verifies(&mut card, "000000"));
    }
}
