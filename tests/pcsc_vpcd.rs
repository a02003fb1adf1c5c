//! The real PC/SC stack end to end: a worker with the `pcsc` backend encodes two virtual PIV
//! cards attached to vpcd inside pcscd, for a control plane on real PostgreSQL and RabbitMQ.
//! Then, with the worker stopped, yubico-piv-tool, openssl and a plain PC/SC client check
//! on each chip that the factory credentials are gone and the recorded ones are in place.
//!
//! The test name contains `vpcd`, so nextest runs it alone with the other vpcd tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use aes_gcm::aes::Aes192;
use aes_gcm::aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};
use cardfleet::credentials::{CredentialCipher, MasterKey};
use cardfleet_schemas::profile::ManagementKeyAlgorithm;
use cardfleet_schemas::{CardProfile, CardSecrets};
use cardfleet_worker::apdu::{CommandApdu, ResponseApdu, StatusWord};
use cardfleet_worker::engine::{self, CardTransport};
use cardfleet_worker::piv::StateStore;
use cardfleet_worker::rack::pcsc::CardConnection;
use cardfleet_worker::rack::{RackEvent, SlotCommand, SlotJob};
use cardfleet_worker::settings::WorkerSettings;
use cardfleet_worker::tlv::{self, Tag};
use cardfleet_worker::vpcd::{self, VirtualCardConfig};
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use support::*;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// vpcd's default reader: one slot per port.
const SLOTS: [(&str, &str); 2] = [
    ("127.0.0.1:35963", "Virtual PCD 00 00"),
    ("127.0.0.1:35964", "Virtual PCD 00 01"),
];
/// Tools this test drives, with the Debian package each comes from.
const TOOLS: [(&str, &str); 5] = [
    ("pcscd", "pcscd"),
    ("pidof", "sysvinit-utils"),
    ("opensc-tool", "opensc"),
    ("yubico-piv-tool", "yubico-piv-tool"),
    ("openssl", "openssl"),
];
const FACTORY_KEY: &str = "010203040506070801020304050607080102030405060708";
const WAIT: Duration = Duration::from_secs(30);

/// A virtual card served in this process on a vpcd port, pulled when dropped.
///
/// `vpcd::run_virtual_card` only looks at its stop flag between connections and vpcd never
/// closes one, so this keeps the connection itself and closes it to pull the card.
struct AttachedCard {
    serial: u32,
    reader: &'static str,
    socket: TcpStream,
    thread: Option<thread::JoinHandle<()>>,
}

impl AttachedCard {
    fn attach(addr: &str, reader: &'static str, serial: u32, dir: &Path) -> Self {
        let config = VirtualCardConfig {
            state_dir: Some(dir.to_path_buf()),
            chip_serial: Some(serial),
            ..VirtualCardConfig::new(addr)
        };
        let store = StateStore::open(dir).unwrap();
        let mut card = vpcd::load_or_create(&config, Some(&store)).unwrap();
        let stream = TcpStream::connect(addr)
            .unwrap_or_else(|e| panic!("vpcd does not listen on {addr}: {e}"));
        let socket = stream.try_clone().unwrap();
        let thread = thread::spawn(move || {
            let _ = vpcd::serve_connection(stream, &mut card, Some(&store));
        });
        let attached = Self {
            serial,
            reader,
            socket,
            thread: Some(thread),
        };
        attached.wait_until_identified();
        attached
    }

    /// Reads the chip serial through pcscd until it is this card's.
    fn wait_until_identified(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = CardConnection::open(self.reader, false)
                .and_then(|mut c| {
                    let mut t = c.transaction()?;
                    Ok(engine::read_chip_serial(&mut t))
                })
                .ok()
                .and_then(Result::ok);
            if seen.as_deref() == Some(self.serial.to_string().as_str()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "card {} never showed in {}",
                self.serial,
                self.reader
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn pull(mut self) {
        self.close();
        wait_for_empty_reader(self.reader);
    }

    fn close(&mut self) {
        let _ = self.socket.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AttachedCard {
    fn drop(&mut self) {
        self.close();
    }
}

fn run(tool: &str, args: &[&str]) -> Output {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool} does not start: {e}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{tool} {args:?} hung");
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Tools present, pcscd running with both vpcd readers, and no card left in them.
fn prepare() {
    for (tool, package) in TOOLS {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap();
        assert!(
            found.status.success(),
            "{tool} is missing: install the Debian package `{package}` (scripts/test does)"
        );
    }
    if !run("pidof", &["pcscd"]).status.success() {
        // pcscd daemonizes: the command returns once the daemon is forked.
        assert!(
            Command::new("pcscd").status().unwrap().success(),
            "pcscd does not start"
        );
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let listing = text(&run("opensc-tool", &["-l"]));
        if SLOTS.iter().all(|(_, reader)| listing.contains(reader)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pcscd shows no vpcd readers (install `vsmartcard-vpcd`, then restart pcscd):\n{listing}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    // A card left by an earlier run that died without cleaning up must be gone first.
    for (_, reader) in SLOTS {
        wait_for_empty_reader(reader);
    }
}

/// Waits until pcscd shows no card in `reader` (a status query: no APDU is sent).
fn wait_for_empty_reader(reader: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let listing = text(&run("opensc-tool", &["-l"]));
        if !listing
            .lines()
            .any(|l| l.contains(reader) && l.contains("Yes"))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{reader} still shows a card:\n{listing}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A worker in this process whose rack is every vpcd reader, through pcscd.
struct PcscWorker {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl PcscWorker {
    fn start(app: &TestApp, dir: &Path) -> Self {
        let file = dir.join("cardfleet-worker.toml");
        std::fs::write(
            &file,
            "[reader]\ntype = \"pcsc\"\nname_patterns = [\"Virtual PCD\"]\n",
        )
        .unwrap();
        let overrides = [
            ("worker.rack_id", "rack-pcsc".to_owned()),
            ("amqp.url", app.vhost.url()),
            ("amqp.reconnect_max_seconds", "1".into()),
            ("worker.heartbeat_interval_seconds", "1".into()),
            ("worker.retry_backoff_ms", "20".into()),
            ("worker.card_wait_seconds", "30".into()),
            ("metrics.listen", "127.0.0.1:0".into()),
        ];
        let settings = WorkerSettings::load(Some(&file), &overrides).unwrap();
        assert_eq!(settings.reader.name_patterns, ["Virtual PCD"]);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(cardfleet_worker::app::run(settings, shutdown.clone()));
        Self { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let finished = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        let result = finished
            .expect("the worker stops")
            .expect("the worker task ends");
        result.expect("the worker ran without error");
    }
}

/// A credential stored for a card's latest job, decrypted as the dispatcher does.
async fn stored(app: &TestApp, chip_serial: &str, field: &str) -> String {
    let sql = format!(
        "SELECT cr.job_id, cr.key_id, cr.{field}_nonce, cr.{field}_ct FROM credentials cr
         JOIN cards c ON c.id = cr.card_id WHERE c.chip_serial = $1 ORDER BY cr.created_at DESC LIMIT 1"
    );
    let (job_id, key_id, nonce, ct): (Uuid, String, Vec<u8>, Vec<u8>) =
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(chip_serial)
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    let cipher = CredentialCipher::from_hex("k1", ENCRYPTION_KEY).unwrap();
    let sealed = cardfleet::credentials::Sealed {
        nonce,
        ciphertext: ct,
    };
    let context = cardfleet::store::initialize::credential_context(job_id, field);
    cipher
        .open(&key_id, &sealed, &context)
        .unwrap()
        .expose()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vpcd_cards_encoded_by_a_pcsc_worker_hold_the_recorded_credentials_and_keys() {
    tokio::task::spawn_blocking(prepare).await.unwrap();
    let dir = std::env::temp_dir().join(format!("cardfleet-pcsc-vpcd-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // yubico-piv-tool 2.2 prints serials as signed 32-bit numbers: stay below 2^31.
    let first = (rand::random::<u32>() & 0x3FFF_FFFF) | 1;
    let serials = [first, first + 1];
    let cards_dir = dir.clone();
    let cards = tokio::task::spawn_blocking(move || {
        [0, 1].map(|i| {
            let (addr, reader) = SLOTS[i];
            AttachedCard::attach(
                addr,
                reader,
                serials[i],
                &cards_dir.join(format!("card-{i}")),
            )
        })
    })
    .await
    .unwrap();

    let app = spawn_app().await;
    let import: Vec<_> = serials
        .iter()
        .map(|s| json!({ "card_number": format!("TC-{s}"), "chip_serial": s.to_string(), "card_type": "temporary", "profile": "temporary-piv" }))
        .collect();
    let r = app
        .post("/v1/cards/import", json!({ "cards": import }))
        .await;
    assert_eq!(r.body["imported"], 2, "{}", r.body);
    app.enable().await;
    let worker = PcscWorker::start(&app, &dir);

    let listed = app
        .get("/v1/cards?type=temporary&state=produced&limit=10")
        .await
        .body;
    let card_ids: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["card_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(card_ids.len(), 2, "{listed}");
    let r = app
        .post("/v1/initializations", json!({ "card_ids": card_ids }))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        r.body["accepted"].as_array().unwrap().len(),
        2,
        "{}",
        r.body
    );

    for id in &card_ids {
        eventually(
            Duration::from_secs(120),
            "both cards unassigned with their steps recorded",
            || async {
                let card = app.get(&format!("/v1/cards/{id}")).await.body;
                card["state"] == "unassigned"
                    && card["jobs"][0]["steps"]
                        .as_array()
                        .is_some_and(|s| !s.is_empty())
            },
        )
        .await;
        let card = app.get(&format!("/v1/cards/{id}")).await.body;
        let steps: Vec<String> = card["jobs"][0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{}={}",
                    s["step"].as_str().unwrap(),
                    s["status"].as_str().unwrap_or("?")
                )
            })
            .collect();
        println!(
            "card {} (chip {}): {} steps: {}",
            id,
            card["chip_serial"],
            steps.len(),
            steps.join(" ")
        );
        assert!(
            steps.iter().any(|s| s == "generate_key_9a=done"),
            "{steps:?}"
        );
    }
    worker.stop().await;

    for card in &cards {
        let serial = card.serial.to_string();
        let pin = stored(&app, &serial, "pin").await;
        let puk = stored(&app, &serial, "puk").await;
        let key = MasterKey::from_hex(MASTER_KEY)
            .unwrap()
            .derive_management_key(&serial, ManagementKeyAlgorithm::Aes192)
            .expose()
            .to_owned();
        let (reader, dir) = (card.reader, dir.clone());
        tokio::task::spawn_blocking(move || {
            check_card(reader, &pin, &puk, &hex::decode(key).unwrap(), &dir)
        })
        .await
        .unwrap();
    }

    tokio::task::spawn_blocking(move || cards.map(AttachedCard::pull))
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vpcd_cards_going_in_and_out_become_pcsc_rack_events_with_stable_slots() {
    tokio::task::spawn_blocking(prepare).await.unwrap();
    let dir = std::env::temp_dir().join(format!(
        "cardfleet-pcsc-rack-vpcd-{}",
        Uuid::new_v4().simple()
    ));
    let mut rack = cardfleet_worker::rack::pcsc_rack(&["Virtual PCD".to_owned()]).unwrap();
    assert_eq!(rack.slots.len(), 16, "pcscd serves at most 16 readers");

    let first = (rand::random::<u32>() & 0x3FFF_FFFF) | 1;
    let attach = |i: usize, serial: u32| {
        let dir = dir.join(format!("card-{serial}"));
        tokio::task::spawn_blocking(move || {
            AttachedCard::attach(SLOTS[i].0, SLOTS[i].1, serial, &dir)
        })
    };
    let card = attach(0, first).await.unwrap();
    let inserted = next_event(&mut rack).await;
    println!("{} in: {inserted:?}", SLOTS[0].1);
    let RackEvent::Inserted { slot, chip_serial } = inserted else {
        panic!("{inserted:?}")
    };
    assert_eq!(chip_serial, first.to_string());

    // A job for a chip that is not in the slot is not tried.
    let (reply, report) = tokio::sync::oneshot::channel();
    let job = SlotJob {
        job_id: Uuid::new_v4(),
        chip_serial: "not-this-chip".into(),
        profile: CardProfile::builtin().unwrap().remove(0),
        secrets: CardSecrets {
            pin: "271828".into(),
            puk: "31415926".into(),
            management_key: hex::encode([7u8; 24]),
            management_key_algorithm: ManagementKeyAlgorithm::Aes192,
        },
        cancelled: Default::default(),
    };
    rack.slots[usize::from(slot)]
        .send(SlotCommand::Encode {
            job: Box::new(job),
            reply,
        })
        .unwrap();
    let report = report.await.unwrap();
    assert_eq!(report.failure.unwrap().code, "card_absent");

    tokio::task::spawn_blocking(move || card.pull())
        .await
        .unwrap();
    let removed = next_event(&mut rack).await;
    println!("{} out: {removed:?}", SLOTS[0].1);
    assert_eq!(removed, RackEvent::Removed { slot });

    let other = attach(1, first + 1).await.unwrap();
    let inserted = next_event(&mut rack).await;
    println!("{} in: {inserted:?}", SLOTS[1].1);
    let RackEvent::Inserted {
        slot: other_slot,
        chip_serial,
    } = inserted
    else {
        panic!("{inserted:?}")
    };
    assert_eq!(chip_serial, (first + 1).to_string());
    assert_ne!(other_slot, slot, "another reader, another slot");

    let again = attach(0, first + 2).await.unwrap();
    let inserted = next_event(&mut rack).await;
    println!("{} in: {inserted:?}", SLOTS[0].1);
    assert_eq!(
        inserted,
        RackEvent::Inserted {
            slot,
            chip_serial: (first + 2).to_string()
        },
        "same reader, same slot"
    );

    tokio::task::spawn_blocking(move || {
        other.pull();
        again.pull();
    })
    .await
    .unwrap();
    let mut gone = [next_event(&mut rack).await, next_event(&mut rack).await];
    gone.sort_by_key(|e| format!("{e:?}"));
    let mut expected = [
        RackEvent::Removed { slot },
        RackEvent::Removed { slot: other_slot },
    ];
    expected.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(gone, expected);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn next_event(rack: &mut cardfleet_worker::rack::Rack) -> RackEvent {
    let event = tokio::time::timeout(WAIT, rack.events.recv()).await;
    event.expect("a rack event in time").expect("the rack runs")
}

/// yubico-piv-tool against one reader; the output, and whether the tool succeeded.
fn piv_tool(reader: &str, args: &[&str]) -> (bool, String) {
    let mut all = vec!["-r", reader];
    all.extend_from_slice(args);
    let output = run("yubico-piv-tool", &all);
    (output.status.success(), text(&output))
}

/// What the chip in `reader` accepts now: one try each of the factory PIN and PUK (the
/// right PIN and PUK then restore the counters), the factory and the derived management key,
/// and a signature from each profile key, checked by openssl.
fn check_card(reader: &str, pin: &str, puk: &str, derived_key: &[u8], dir: &Path) {
    let (ok, out) = piv_tool(reader, &["-a", "verify-pin", "-P", "123456"]);
    assert!(!ok, "{reader}: the factory PIN still verifies:\n{out}");
    println!("{reader}: factory PIN 123456 rejected: {}", out.trim());
    let (ok, out) = piv_tool(reader, &["-a", "verify-pin", "-P", pin]);
    assert!(ok, "{reader}: the stored PIN does not verify:\n{out}");
    println!("{reader}: stored PIN verifies: {}", out.trim());

    let (ok, out) = piv_tool(
        reader,
        &["-a", "change-puk", "-P", "12345678", "-N", "87654321"],
    );
    assert!(!ok, "{reader}: the factory PUK still works:\n{out}");
    println!("{reader}: factory PUK 12345678 rejected: {}", out.trim());
    let (ok, out) = piv_tool(reader, &["-a", "change-puk", "-P", puk, "-N", puk]);
    assert!(ok, "{reader}: the stored PUK is not the card's:\n{out}");
    println!("{reader}: stored PUK accepted: {}", out.trim());

    let (ok, out) = piv_tool(reader, &[&format!("--key={FACTORY_KEY}"), "-a", "set-ccc"]);
    assert!(
        !ok,
        "{reader}: the factory 3DES management key still authenticates:\n{out}"
    );
    println!(
        "{reader}: factory management key rejected by the tool: {}",
        out.trim()
    );

    let mut connection = CardConnection::open(reader, true).unwrap();
    let mut card = connection.transaction().unwrap();
    let card: &mut dyn CardTransport = &mut card;
    assert_eq!(
        send(
            card,
            CommandApdu::new(0x00, 0xA4, 0x04, 0x00)
                .with_data(vec![0xA0, 0, 0, 3, 8])
                .unwrap()
        )
        .sw(),
        StatusWord::Success
    );
    let meta = send(
        card,
        CommandApdu::new(0x00, 0xF7, 0x00, 0x9B)
            .with_ne(256)
            .unwrap(),
    );
    assert_eq!(
        tlv::find(meta.data(), Tag::new(0x01)).unwrap(),
        Some(&[0x0A][..]),
        "management key is AES-192"
    );
    assert_eq!(
        tlv::find(meta.data(), Tag::new(0x05)).unwrap(),
        Some(&[0x00][..]),
        "and not the default"
    );
    let factory = hex::decode(FACTORY_KEY).unwrap();
    assert_ne!(
        auth_aes192(card, &factory),
        StatusWord::Success,
        "factory key bytes as AES-192"
    );
    assert_eq!(
        auth_aes192(card, derived_key),
        StatusWord::Success,
        "{reader}: the derived management key"
    );
    println!(
        "{reader}: management key is AES-192, factory key rejected, derived key authenticates"
    );

    for slot in [0x9A, 0x9C, 0x9E] {
        let meta = send(
            card,
            CommandApdu::new(0x00, 0xF7, 0x00, slot)
                .with_ne(256)
                .unwrap(),
        );
        assert_eq!(
            meta.sw(),
            StatusWord::Success,
            "{reader}: no key in {slot:02X}"
        );
        assert_eq!(
            tlv::find(meta.data(), Tag::new(0x01)).unwrap(),
            Some(&[0x11][..]),
            "P-256 in {slot:02X}"
        );
        assert_eq!(
            tlv::find(meta.data(), Tag::new(0x03)).unwrap(),
            Some(&[0x01][..]),
            "generated on the card"
        );
        let public = tlv::find(meta.data(), Tag::new(0x04)).unwrap().unwrap();
        let point = tlv::find(public, Tag::new(0x86)).unwrap().unwrap().to_vec();
        let message = format!("signed by slot {slot:02X} of {reader}");
        let signature = sign_p256(card, slot, pin, message.as_bytes());
        let verdict = openssl_verify(dir, slot, &point, message.as_bytes(), &signature);
        println!(
            "{reader}: slot {slot:02X} holds a generated P-256 key; openssl: {}",
            verdict.trim()
        );
    }
}

fn send(card: &mut dyn CardTransport, command: CommandApdu) -> ResponseApdu {
    let mut response = ResponseApdu::parse(&card.transmit(&command.to_bytes()).unwrap()).unwrap();
    let mut data = response.data().to_vec();
    while let StatusWord::BytesRemaining(_) = response.sw() {
        let more = CommandApdu::new(0x00, 0xC0, 0x00, 0x00)
            .with_ne(256)
            .unwrap();
        response = ResponseApdu::parse(&card.transmit(&more.to_bytes()).unwrap()).unwrap();
        data.extend_from_slice(response.data());
    }
    ResponseApdu::new(data, response.sw())
}

/// Mutual authentication with an AES-192 management key, the client side computed here.
fn auth_aes192(card: &mut dyn CardTransport, key: &[u8]) -> StatusWord {
    let cipher = Aes192::new_from_slice(key).unwrap();
    let general_auth = |template: Vec<u8>| {
        CommandApdu::new(0x00, 0x87, 0x0A, 0x9B)
            .with_data(template)
            .unwrap()
    };
    let response = send(card, general_auth(vec![0x7C, 0x02, 0x80, 0x00]));
    if response.sw() != StatusWord::Success {
        return response.sw();
    }
    let body = tlv::parse_single(response.data(), Tag::new(0x7C)).unwrap();
    let mut witness =
        GenericArray::clone_from_slice(tlv::find(body, Tag::new(0x80)).unwrap().unwrap());
    cipher.decrypt_block(&mut witness);
    let mut challenge = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut challenge);
    let inner = [
        tlv::build(Tag::new(0x80), &witness),
        tlv::build(Tag::new(0x81), &challenge),
    ]
    .concat();
    let response = send(card, general_auth(tlv::build(Tag::new(0x7C), &inner)));
    if response.sw() == StatusWord::Success {
        let body = tlv::parse_single(response.data(), Tag::new(0x7C)).unwrap();
        let mut expected = GenericArray::clone_from_slice(&challenge);
        cipher.encrypt_block(&mut expected);
        assert_eq!(
            tlv::find(body, Tag::new(0x82)).unwrap().unwrap(),
            &expected[..],
            "the card knows the key"
        );
    }
    response.sw()
}

/// VERIFY the PIN, then an ECDSA P-256 signature over SHA-256 of `message` (DER).
fn sign_p256(card: &mut dyn CardTransport, slot: u8, pin: &str, message: &[u8]) -> Vec<u8> {
    let mut reference = pin.as_bytes().to_vec();
    reference.resize(8, 0xFF);
    let verify = CommandApdu::new(0x00, 0x20, 0x00, 0x80)
        .with_data(reference)
        .unwrap();
    assert_eq!(send(card, verify).sw(), StatusWord::Success);
    let digest = Sha256::digest(message);
    let inner = [
        tlv::build(Tag::new(0x82), &[]),
        tlv::build(Tag::new(0x81), &digest),
    ]
    .concat();
    let sign = CommandApdu::new(0x00, 0x87, 0x11, slot)
        .with_data(tlv::build(Tag::new(0x7C), &inner))
        .unwrap();
    let response = send(card, sign.with_ne(256).unwrap());
    assert_eq!(
        response.sw(),
        StatusWord::Success,
        "signing with {slot:02X}"
    );
    let body = tlv::parse_single(response.data(), Tag::new(0x7C)).unwrap();
    tlv::find(body, Tag::new(0x82)).unwrap().unwrap().to_vec()
}

/// `openssl dgst -verify` with the slot's public key; panics unless openssl says OK.
fn openssl_verify(dir: &Path, slot: u8, point: &[u8], message: &[u8], signature: &[u8]) -> String {
    // SubjectPublicKeyInfo of a P-256 key: the fixed algorithm header, then the point.
    let mut spki = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
    spki.extend_from_slice(point);
    let path = |name: &str| -> PathBuf { dir.join(format!("{slot:02x}-{name}")) };
    std::fs::write(path("key.der"), &spki).unwrap();
    std::fs::write(path("message"), message).unwrap();
    std::fs::write(path("signature.der"), signature).unwrap();
    let [key, msg, sig] =
        ["key.der", "message", "signature.der"].map(|n| path(n).to_string_lossy().into_owned());
    let output = run(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-keyform",
            "DER",
            "-verify",
            &key,
            "-signature",
            &sig,
            &msg,
        ],
    );
    let said = text(&output);
    assert!(
        output.status.success() && said.contains("Verified OK"),
        "slot {slot:02X}: {said}"
    );
    said
}
