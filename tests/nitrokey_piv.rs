//! An independent PIV implementation end to end: the Nitrokey PIV applet (crate
//! `piv-authenticator`, on trussed's software platform, binary `nitrokey-piv-vpcd` of
//! `applets/nitrokey-piv`) attached to vpcd's second reader, encoded by the worker's `pcsc`
//! rack through pcscd, then checked with OpenSC (`opensc-tool`) and openssl:
//! the factory PIN is rejected, the escrowed PIN verifies, every key slot of the profile
//! signs with the key whose public part the worker reported, the factory PUK is rejected
//! and the escrowed PUK unblocks a blocked PIN; yubico-piv-tool checks that the factory
//! management key is refused and the per-card one authenticates.
//!
//! `scripts/test` builds the applet binary before the tests. The test name contains `vpcd`,
//! so nextest runs it alone with the other vpcd tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "pcsc_vpcd/stack.rs"]
mod stack;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use base64::Engine as _;
use cardfleet_schemas::profile::ManagementKeyAlgorithm;
use cardfleet_schemas::{CardProfile, CardSecrets, Outcome};
use cardfleet_worker::engine::DirJournalKeeper;
use cardfleet_worker::rack::{RackEvent, SlotCommand, SlotJob};
use stack::{ONE_AT_A_TIME, WAIT, run, text, wait_for_empty_reader};
use uuid::Uuid;

const ADDR_PORT: &str = "35964";
const READER: &str = "Virtual PCD 00 01";
/// The serial the applet makes up for Yubico's GET SERIAL (`00 52 F7 43`).
const APPLET_SERIAL: &str = "5437251";
const PIV_SELECT: &str = "00A4040009A00000030800001000";

/// The applet process, killed (card pulled) when dropped.
struct Applet(Child);

impl Applet {
    fn start() -> Self {
        let exe = applet_binary();
        assert!(
            exe.exists(),
            "{} is missing: cargo build -p nitrokey-piv-vpcd --bin nitrokey-piv-vpcd",
            exe.display()
        );
        let child = Command::new(&exe)
            .arg(ADDR_PORT)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }
}

impl Drop for Applet {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `target/<profile>/nitrokey-piv-vpcd`, beside this test's `deps/` directory.
fn applet_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    profile_dir.join("nitrokey-piv-vpcd")
}

fn pin_apdu(pin: &str) -> String {
    let mut field = pin.as_bytes().to_vec();
    field.resize(8, 0xFF);
    format!("0020008008{}", hex::encode_upper(field))
}

/// Sends APDUs in one OpenSC session and returns its output.
fn opensc(apdus: &[String]) -> String {
    // The generic driver: OpenSC's PIV driver re-selects the applet when it takes the reader
    // lock between APDUs, which ends a PIN-always window (slot 9C) before the signature.
    let mut args = vec![
        "-c".to_owned(),
        "default".to_owned(),
        "-r".to_owned(),
        READER.to_owned(),
    ];
    for apdu in apdus {
        args.push("-s".into());
        args.push(apdu.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    text(&run("opensc-tool", &args))
}

/// The status words and data of each APDU answered in an `opensc-tool` output.
fn answers(output: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for block in output.split("Received (").skip(1) {
        let sw = block
            .split(')')
            .next()
            .unwrap()
            .replace("SW1=0x", "")
            .replace(", SW2=0x", "");
        let mut data = Vec::new();
        for line in block.lines().skip(1) {
            if line.starts_with("Sending") {
                break;
            }
            let hex_part: String = line.chars().take(48).collect();
            for byte in hex_part.split_whitespace() {
                if let Ok(b) = u8::from_str_radix(byte, 16) {
                    data.push(b);
                }
            }
        }
        out.push((sw.to_uppercase(), data));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vpcd_nitrokey_piv_applet_is_encoded_by_a_pcsc_worker_and_checked_by_opensc() {
    let _turn = ONE_AT_A_TIME.lock().await;
    tokio::task::spawn_blocking(|| wait_for_empty_reader(READER))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "cardfleet-nitrokey-vpcd-{}",
        Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();

    let mut rack = cardfleet_worker::rack::pcsc_rack(&[READER.to_owned()]).unwrap();
    let applet = Applet::start();
    let slot = loop {
        let event = tokio::time::timeout(WAIT, rack.events.recv())
            .await
            .expect("the applet shows in the reader in time")
            .expect("the rack runs");
        println!("rack event: {event:?}");
        if let RackEvent::Inserted { slot, chip_serial } = event {
            assert_eq!(chip_serial, APPLET_SERIAL);
            break slot;
        }
    };

    let secrets = CardSecrets {
        pin: "271828".into(),
        puk: "31415926".into(),
        management_key: hex::encode((1u8..=24).map(|b| b.wrapping_mul(37)).collect::<Vec<u8>>()),
        management_key_algorithm: ManagementKeyAlgorithm::Aes192,
    };
    let profile: CardProfile = CardProfile::builtin().unwrap().remove(0);
    let job = SlotJob {
        job_id: Uuid::new_v4(),
        chip_serial: APPLET_SERIAL.into(),
        profile: profile.clone(),
        secrets: secrets.clone(),
        cancelled: Default::default(),
        journal_keeper: Some(Arc::new(DirJournalKeeper::new(dir.join("journal")))),
    };
    let (reply, report) = tokio::sync::oneshot::channel();
    rack.slots[usize::from(slot)]
        .send(SlotCommand::Encode {
            job: Box::new(job),
            reply,
        })
        .unwrap();
    let report = tokio::time::timeout(std::time::Duration::from_secs(120), report)
        .await
        .expect("the encoding ends in time")
        .unwrap();
    for step in &report.steps {
        println!("step {step:?}");
    }
    assert_eq!(report.outcome, Outcome::Succeeded, "{:?}", report.failure);
    drop(rack);

    let mut slots: Vec<&str> = report.public_keys.iter().map(|k| k.slot.as_str()).collect();
    slots.sort_unstable();
    assert_eq!(slots, ["9a", "9c", "9e"], "{:?}", report.public_keys);

    // Factory PIN refused, escrowed PIN accepted (VERIFY through OpenSC).
    let output = tokio::task::spawn_blocking(|| opensc(&[PIV_SELECT.into(), pin_apdu("123456")]))
        .await
        .unwrap();
    let got = answers(&output);
    assert!(got[1].0.starts_with("63C"), "factory PIN: {output}");
    let pin = secrets.pin.clone();
    let output = tokio::task::spawn_blocking(move || opensc(&[PIV_SELECT.into(), pin_apdu(&pin)]))
        .await
        .unwrap();
    assert_eq!(answers(&output)[1].0, "9000", "escrowed PIN: {output}");

    // Each slot signs a digest; openssl verifies it with the reported public key.
    let digest = [0x42u8; 32];
    std::fs::write(dir.join("digest.bin"), digest).unwrap();
    for key in &report.public_keys {
        let reference = &key.slot;
        let pin = secrets.pin.clone();
        let sign = format!(
            "008711{}267C24820081 20{}",
            reference.to_uppercase(),
            hex::encode_upper(digest)
        )
        .replace(' ', "");
        let output =
            tokio::task::spawn_blocking(move || opensc(&[PIV_SELECT.into(), pin_apdu(&pin), sign]))
                .await
                .unwrap();
        let got = answers(&output);
        assert_eq!(got[2].0, "9000", "slot {reference} signs: {output}");
        // 7C L 82 L <DER ECDSA signature>
        let response = &got[2].1;
        let at = response
            .windows(2)
            .position(|w| w[0] == 0x82)
            .expect("a signature in the answer");
        let signature = &response[at + 2..at + 2 + usize::from(response[at + 1])];
        let spki = base64::engine::general_purpose::STANDARD
            .decode(&key.spki_der_base64)
            .unwrap();
        let (pub_file, sig_file) = (
            dir.join(format!("{reference}.pub.der")),
            dir.join(format!("{reference}.sig")),
        );
        std::fs::write(&pub_file, spki).unwrap();
        std::fs::write(&sig_file, signature).unwrap();
        let digest_file = dir.join("digest.bin");
        let verified = tokio::task::spawn_blocking(move || {
            run(
                "openssl",
                &[
                    "pkeyutl",
                    "-verify",
                    "-pubin",
                    "-keyform",
                    "DER",
                    "-inkey",
                    pub_file.to_str().unwrap(),
                    "-in",
                    digest_file.to_str().unwrap(),
                    "-sigfile",
                    sig_file.to_str().unwrap(),
                ],
            )
        })
        .await
        .unwrap();
        assert!(
            verified.status.success(),
            "slot {reference}: {}",
            text(&verified)
        );
    }
    // yubico-piv-tool: the factory management key is refused, the per-card one (3DES on
    // this card) authenticates (SET CCC needs it).
    let key_check = |key: String| {
        tokio::task::spawn_blocking(move || {
            let key = format!("--key={key}");
            run(
                "yubico-piv-tool",
                &["-r", READER, key.as_str(), "-a", "set-ccc"],
            )
        })
    };
    let factory = key_check(profile.transport.management_key.clone())
        .await
        .unwrap();
    assert!(!factory.status.success(), "factory key: {}", text(&factory));
    let derived = key_check(secrets.management_key.clone()).await.unwrap();
    assert!(derived.status.success(), "per-card key: {}", text(&derived));

    // The factory PUK is refused; the escrowed PUK unblocks a blocked PIN.
    let wrong = pin_apdu("000000");
    let reset = |puk: &str, new_pin: &str| {
        let mut data = puk.as_bytes().to_vec();
        data.resize(8, 0xFF);
        let mut pin = new_pin.as_bytes().to_vec();
        pin.resize(8, 0xFF);
        data.extend_from_slice(&pin);
        format!("002C008010{}", hex::encode_upper(data))
    };
    let apdus = vec![
        PIV_SELECT.to_owned(),
        wrong.clone(),
        wrong.clone(),
        wrong,
        pin_apdu(&secrets.pin),
        reset("12345678", "654321"),
        reset(&secrets.puk, "654321"),
        pin_apdu("654321"),
    ];
    let output = tokio::task::spawn_blocking(move || opensc(&apdus))
        .await
        .unwrap();
    let got: Vec<String> = answers(&output).into_iter().map(|(sw, _)| sw).collect();
    assert_eq!(got[4], "6983", "the PIN is blocked: {output}");
    assert!(got[5].starts_with("63C"), "factory PUK: {output}");
    assert_eq!(got[6], "9000", "escrowed PUK: {output}");
    assert_eq!(got[7], "9000", "the unblocked PIN: {output}");
    drop(applet);
    tokio::task::spawn_blocking(|| wait_for_empty_reader(READER))
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
