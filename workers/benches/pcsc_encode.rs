//! Benchmark (a): per-card encoding over pcscd + vpcd, against a raw replay of the same APDUs.
//!
//! Each side gets fresh virtual PIV cards, attached in this process to vpcd's first reader.
//! The engine side runs `engine::encode` (temporary-piv profile) through the `pcsc` backend's
//! transport and records every APDU of the first card. The replay side sends those recorded
//! APDUs to a fresh card through the same transport, computing only what a replay cannot
//! reuse: the answer to the card's random witness in management key authentication. Both
//! time connect, transaction, APDUs and disconnect; card swaps are not timed. A last line
//! runs both sides on the card model directly, without pcscd: the engine's own cost.
//!
//! Needs pcscd running with vsmartcard-vpcd (`scripts/test` installs and starts both).
//! `cargo bench -p cardfleet-worker --bench pcsc_encode [-- CARDS]` (default 20 per side).
//! Prints figures; asserts nothing about time.

use std::ffi::CString;
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use aes::cipher::{BlockDecrypt, KeyInit, generic_array::GenericArray};
use anyhow::{Context as _, bail};
use cardfleet_schemas::profile::ManagementKeyAlgorithm;
use cardfleet_schemas::{CardProfile, CardSecrets, Outcome};
use cardfleet_worker::apdu::CommandApdu;
use cardfleet_worker::engine::{self, CardTransport, EncodeRequest, TransportError};
use cardfleet_worker::piv::{CardOptions, VirtualPivCard};
use cardfleet_worker::rack::pcsc::CardConnection;
use cardfleet_worker::tlv::{self, Tag};
use cardfleet_worker::vpcd;
use uuid::Uuid;

const VPCD: &str = "127.0.0.1:35963";
const READER: &str = "Virtual PCD 00 00";
const FACTORY_KEY: &str = "010203040506070801020304050607080102030405060708";
const NEW_KEY: &str = "9f1c2b3a4d5e6f708192a3b4c5d6e7f80112233445566778";
const WAIT: Duration = Duration::from_secs(30);

/// A fresh virtual card served in this process on vpcd's first reader.
struct FreshCard {
    socket: TcpStream,
    thread: Option<thread::JoinHandle<()>>,
}

impl FreshCard {
    fn insert(serial: u32) -> anyhow::Result<Self> {
        let mut card = VirtualPivCard::new(CardOptions::with_serial(serial))?;
        let stream =
            TcpStream::connect(VPCD).with_context(|| format!("vpcd does not listen on {VPCD}"))?;
        let socket = stream.try_clone()?;
        let thread = thread::spawn(move || {
            let _ = vpcd::serve_connection(stream, &mut card, None);
        });
        wait_for(true)?;
        Ok(Self {
            socket,
            thread: Some(thread),
        })
    }

    /// Pulls the card and waits until pcscd has seen the reader empty, so the next card is
    /// not taken for this one.
    fn pull(mut self) -> anyhow::Result<()> {
        self.close();
        wait_for(false)
    }

    fn close(&mut self) {
        let _ = self.socket.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FreshCard {
    fn drop(&mut self) {
        self.close();
    }
}

/// Waits on reader status changes (no APDU is sent) until a card is present or not.
fn wait_for(present: bool) -> anyhow::Result<()> {
    let context = pcsc::Context::establish(pcsc::Scope::User).context("pcscd is not running")?;
    let mut states = [pcsc::ReaderState::new(
        CString::new(READER)?,
        pcsc::State::UNAWARE,
    )];
    let deadline = Instant::now() + WAIT;
    loop {
        match context.get_status_change(Duration::from_millis(500), &mut states) {
            Ok(()) | Err(pcsc::Error::Timeout) => {}
            Err(e) => {
                bail!("{READER}: {e} (is vsmartcard-vpcd installed and pcscd restarted since?)")
            }
        }
        let state = states[0].event_state();
        if state.contains(pcsc::State::PRESENT) == present && !state.contains(pcsc::State::UNKNOWN)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{READER} did not become {}",
                if present { "occupied" } else { "empty" }
            );
        }
        states[0].sync_current_state();
    }
}

/// Command APDUs with the card's full response to each.
type Apdus = Vec<(Vec<u8>, Vec<u8>)>;

/// Keeps every APDU the engine sends, with the card's response.
struct Recording<'t> {
    inner: &'t mut dyn CardTransport,
    apdus: Apdus,
}

impl CardTransport for Recording<'_> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let response = self.inner.transmit(command)?;
        self.apdus.push((command.to_vec(), response.clone()));
        Ok(response)
    }
}

/// A virtual card called directly, without pcscd: what the engine costs by itself.
struct InMemory(VirtualPivCard);

impl CardTransport for InMemory {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        Ok(self.0.process(command))
    }
}

/// Runs the engine with the shipped temporary-piv profile; returns the APDUs if asked.
fn run_engine(serial: u32, card: &mut dyn CardTransport, record: bool) -> anyhow::Result<Apdus> {
    let profile = CardProfile::builtin()?.remove(0);
    let secrets = CardSecrets {
        pin: "271828".into(),
        puk: "31415926".into(),
        management_key: NEW_KEY.into(),
        management_key_algorithm: ManagementKeyAlgorithm::Aes192,
    };
    let chip_serial = serial.to_string();
    let request = EncodeRequest {
        job_id: Uuid::new_v4(),
        chip_serial: &chip_serial,
        profile: &profile,
        secrets: &secrets,
        journal_keeper: None,
    };
    let mut recording = Recording {
        inner: card,
        apdus: Vec::new(),
    };
    let report = if record {
        engine::encode(&request, &mut recording)
    } else {
        engine::encode(&request, recording.inner)
    };
    if report.outcome != Outcome::Succeeded {
        bail!("encoding failed: {:?}", report.failure);
    }
    Ok(recording.apdus)
}

/// Sends the recorded APDUs to a card; returns how many status words differ from the
/// recording.
fn replay(card: &mut dyn CardTransport, apdus: &Apdus) -> anyhow::Result<usize> {
    let mut live = Vec::new();
    let mut recorded: &[u8] = &[];
    let mut mismatches = 0;
    for (command, response) in apdus {
        let command = answer_witness(command, recorded, &live)?.unwrap_or_else(|| command.clone());
        live = card.transmit(&command)?;
        if live.get(live.len().saturating_sub(2)..)
            != response.get(response.len().saturating_sub(2)..)
        {
            mismatches += 1;
        }
        recorded = response;
    }
    Ok(mismatches)
}

/// Times the engine (`record`: and records its APDUs) on a fresh card in vpcd's reader.
fn encode_over_pcsc(serial: u32, record: bool) -> anyhow::Result<(Duration, Apdus)> {
    let card = FreshCard::insert(serial)?;
    let start = Instant::now();
    let mut connection = CardConnection::open(READER, true)?;
    let mut transport = connection.transaction()?;
    let apdus = run_engine(serial, &mut transport, record)?;
    transport.end()?;
    drop(connection);
    let elapsed = start.elapsed();
    card.pull()?;
    Ok((elapsed, apdus))
}

/// Times a replay of `apdus` on a fresh card in vpcd's reader.
fn replay_over_pcsc(serial: u32, apdus: &Apdus) -> anyhow::Result<(Duration, usize)> {
    let card = FreshCard::insert(serial)?;
    let start = Instant::now();
    let mut connection = CardConnection::open(READER, true)?;
    let mut transport = connection.transaction()?;
    let mismatches = replay(&mut transport, apdus)?;
    transport.end()?;
    drop(connection);
    let elapsed = start.elapsed();
    card.pull()?;
    Ok((elapsed, mismatches))
}

/// The second GENERAL AUTHENTICATE of a management key authentication answers the card's
/// random witness: a replay answers this card's witness with the key the engine used (the
/// one that turns the recorded witness into the recorded answer).
fn answer_witness(command: &[u8], recorded: &[u8], live: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    let Ok(apdu) = CommandApdu::parse(command) else {
        return Ok(None);
    };
    if apdu.ins() != 0x87 || apdu.p2() != 0x9B {
        return Ok(None);
    }
    let body = tlv::parse_single(apdu.data(), Tag::new(0x7C))?;
    let (Some(answer), Some(challenge)) = (
        tlv::find(body, Tag::new(0x80))?,
        tlv::find(body, Tag::new(0x81))?,
    ) else {
        return Ok(None);
    };
    let keys: &[&str] = match apdu.p1() {
        0x03 => &[FACTORY_KEY, NEW_KEY],
        0x0A => &[NEW_KEY],
        other => bail!("no replay key for algorithm {other:02X}"),
    };
    let recorded_witness = witness(recorded)?;
    let mut key = keys[0];
    for candidate in keys {
        if decrypt(apdu.p1(), candidate, &recorded_witness)? == answer {
            key = candidate;
        }
    }
    let inner = [
        tlv::build(Tag::new(0x80), &decrypt(apdu.p1(), key, &witness(live)?)?),
        tlv::build(Tag::new(0x81), challenge),
    ]
    .concat();
    let rebuilt = CommandApdu::new(apdu.cla(), apdu.ins(), apdu.p1(), apdu.p2())
        .with_data(tlv::build(Tag::new(0x7C), &inner))?;
    let rebuilt = match apdu.ne() {
        Some(ne) => rebuilt.with_ne(ne)?,
        None => rebuilt,
    };
    Ok(Some(rebuilt.to_bytes()))
}

/// The witness in a response to the first GENERAL AUTHENTICATE.
fn witness(response: &[u8]) -> anyhow::Result<Vec<u8>> {
    let data = response
        .get(..response.len().saturating_sub(2))
        .unwrap_or_default();
    let body = tlv::parse_single(data, Tag::new(0x7C))?;
    Ok(tlv::find(body, Tag::new(0x80))?
        .context("no witness")?
        .to_vec())
}

fn decrypt(algorithm: u8, key: &str, block: &[u8]) -> anyhow::Result<Vec<u8>> {
    let key = hex::decode(key)?;
    let mut block = block.to_vec();
    match (algorithm, block.len()) {
        (0x03, 8) => des::TdesEde3::new_from_slice(&key)?
            .decrypt_block(GenericArray::from_mut_slice(&mut block)),
        (0x0A, 16) => aes::Aes192::new_from_slice(&key)?
            .decrypt_block(GenericArray::from_mut_slice(&mut block)),
        _ => bail!(
            "a witness of {} bytes for algorithm {algorithm:02X}",
            block.len()
        ),
    }
    Ok(block)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and 90th percentile (nearest rank).
fn median_p90(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    let at = |q: f64| times[((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
    (at(0.5), at(0.9))
}

/// Runs `f` on fresh in-memory cards `rounds` times; the median time.
fn in_memory(
    first: u32,
    rounds: usize,
    mut f: impl FnMut(u32, &mut InMemory) -> anyhow::Result<()>,
) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let serial = first + i as u32;
        let mut card = InMemory(VirtualPivCard::new(CardOptions::with_serial(serial))?);
        let start = Instant::now();
        f(serial, &mut card)?;
        times.push(start.elapsed());
    }
    Ok(median_p90(times).0)
}

fn main() -> anyhow::Result<()> {
    let cards: usize = match std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        Some(n) => n
            .parse()
            .context("the argument is the number of cards per side")?,
        None => 20,
    };
    if cards == 0 {
        bail!("at least one card per side");
    }
    wait_for(false).context("vpcd's reader must be empty to start")?;
    let first = (rand::random::<u32>() & 0x3FFF_FFFF) | 1;
    let (_, apdus) = encode_over_pcsc(first, true)?;
    // Alternate the two sides, so that load from elsewhere on the machine hits both alike.
    let (mut engine_times, mut replay_times, mut mismatches) = (Vec::new(), Vec::new(), 0);
    for i in 0..cards {
        let serial = first + 1 + 2 * i as u32;
        engine_times.push(encode_over_pcsc(serial, false)?.0);
        let (time, wrong) = replay_over_pcsc(serial + 1, &apdus)?;
        replay_times.push(time);
        mismatches += wrong;
    }
    let memory_engine = in_memory(first, cards, |serial, card| {
        run_engine(serial, card, false).map(drop)
    })?;
    let memory_replay = in_memory(first, cards, |_, card| replay(card, &apdus).map(drop))?;

    let (engine_median, engine_p90) = median_p90(engine_times);
    let (replay_median, replay_p90) = median_p90(replay_times);
    println!(
        "pcsc_encode: {cards} fresh cards per side in {READER} (pcscd + vpcd), {} APDUs per card",
        apdus.len()
    );
    println!(
        "  engine through the pcsc transport: median {:7.2} ms   p90 {:7.2} ms",
        millis(engine_median),
        millis(engine_p90)
    );
    println!(
        "  raw replay of the same APDUs:      median {:7.2} ms   p90 {:7.2} ms   ({:.0} µs per APDU; {mismatches} status words differed)",
        millis(replay_median),
        millis(replay_p90),
        replay_median.as_secs_f64() * 1e6 / apdus.len() as f64
    );
    println!(
        "  ratio engine / replay: median {:.2}×   p90 {:.2}×   (target ≤ 1.3×)",
        engine_median.as_secs_f64() / replay_median.as_secs_f64(),
        engine_p90.as_secs_f64() / replay_p90.as_secs_f64()
    );
    println!(
        "  without pcscd (card model called directly): engine {:.2} ms, replay {:.2} ms per card (medians)",
        millis(memory_engine),
        millis(memory_replay)
    );
    Ok(())
}
