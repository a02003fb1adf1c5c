//! Harness for end-to-end tests through pcscd and vpcd: a guard around the virtual card
//! process, tool runners with timeouts, and a direct PC/SC client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};
use cardfleet_worker::apdu::{CommandApdu, ResponseApdu, StatusWord};
use cardfleet_worker::piv::MgmtKeyAlgorithm;
use cardfleet_worker::tlv::{self, Tag};
use rand::RngCore;

pub const VPCD: &str = "127.0.0.1:35963";
pub const READER: &str = "Virtual PCD 00 00";
pub const FACTORY_3DES: &str = "010203040506070801020304050607080102030405060708";
pub const TOOLS: [&str; 6] = [
    "pcscd",
    "opensc-tool",
    "yubico-piv-tool",
    "pkcs15-tool",
    "piv-tool",
    "pidof",
];
pub const CARD_TIMEOUT: Duration = Duration::from_secs(30);
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

pub static ONE_CARD_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A virtual card process attached to vpcd, killed when dropped.
pub struct VirtualCard {
    child: Child,
    pub serial: u32,
    state_dir: PathBuf,
    log: PathBuf,
}

impl VirtualCard {
    /// Starts a card with a random serial and waits until PC/SC clients see this very card.
    pub fn start(state_dir: &Path) -> Self {
        // yubico-piv-tool 2.2 prints serials as signed 32-bit numbers; stay below 2^31.
        Self::start_with_serial(state_dir, (rand::random::<u32>() & 0x7FFF_FFFF) | 1)
    }

    pub fn start_with_serial(state_dir: &Path, serial: u32) -> Self {
        let log = state_dir.with_extension("log");
        let child = Command::new(env!("CARGO_BIN_EXE_cardfleet-worker"))
            .args([
                "virtual-card",
                "--vpcd",
                VPCD,
                "--chip-serial",
                &serial.to_string(),
            ])
            .arg("--state-dir")
            .arg(state_dir)
            .env("RUST_LOG", "cardfleet_worker=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the worker binary starts");
        let card = Self {
            child,
            serial,
            state_dir: state_dir.to_path_buf(),
            log,
        };
        card.wait_until_visible();
        card
    }

    /// Polls yubico-piv-tool until it reports this card's serial: another card on the same
    /// vpcd port, or none yet, does not count.
    fn wait_until_visible(&self) {
        let expected = format!("Serial Number:\t{}", self.serial);
        let deadline = Instant::now() + CARD_TIMEOUT;
        loop {
            let output = run("yubico-piv-tool", &["-r", READER, "-a", "status"]);
            if output.status.success() && stdout(&output).contains(&expected) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "card {} did not appear in {READER} within {CARD_TIMEOUT:?}; last status: {}{}\ncard log:\n{}",
                    self.serial,
                    stdout(&output),
                    stderr(&output),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(mut self) -> PathBuf {
        self.kill();
        self.state_dir.clone()
    }

    /// Kills the card and waits until pcscd has seen it leave. vpcd accepts the next card
    /// on the first presence poll after the old socket fails; if that failure happens inside
    /// a client's transmit instead, pcscd never sees the reader empty and ignores the new
    /// card for good. Waiting here keeps the next test's card from racing into that state.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        wait_for_empty_reader();
    }
}

impl Drop for VirtualCard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Takes the card lock and makes sure the tools and pcscd with vpcd are there.
pub fn prepare() -> MutexGuard<'static, ()> {
    let guard = ONE_CARD_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let missing: Vec<_> = TOOLS
        .iter()
        .filter(|tool| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .unwrap()
                .status
                .success()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "missing tools {missing:?}: install pcscd, vsmartcard-vpcd, opensc and yubico-piv-tool \
         (scripts/test installs them)"
    );
    let running = Command::new("pidof").arg("pcscd").output().unwrap();
    if !running.status.success() {
        // pcscd daemonizes: the command returns once the daemon is forked.
        let started = Command::new("pcscd").status().expect("pcscd starts");
        assert!(started.success(), "pcscd failed to start");
    }
    let deadline = Instant::now() + CARD_TIMEOUT;
    while !stdout(&run("opensc-tool", &["-l"])).contains(READER) {
        assert!(
            Instant::now() < deadline,
            "pcscd shows no reader {READER:?}: is vsmartcard-vpcd installed and pcscd restarted since?"
        );
        thread::sleep(Duration::from_millis(100));
    }
    // A card left by an earlier run that died without cleaning up must be gone, too.
    wait_for_empty_reader();
    guard
}

/// Polls the reader state (which sends no APDU) until no card is present.
pub fn wait_for_empty_reader() {
    let deadline = Instant::now() + CARD_TIMEOUT;
    loop {
        let listing = stdout(&run("opensc-tool", &["-l"]));
        let present = listing
            .lines()
            .any(|line| line.contains(READER) && line.contains("Yes"));
        if !present {
            return;
        }
        if Instant::now() > deadline {
            panic!("{READER} still shows a card {CARD_TIMEOUT:?} after it was pulled:\n{listing}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a tool with no input, killing it if it hangs.
pub fn run(tool: &str, args: &[&str]) -> Output {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("{tool} does not start: {err}"));
    let deadline = Instant::now() + TOOL_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{tool} {args:?} hung for {TOOL_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// yubico-piv-tool against the virtual card's reader.
pub fn piv_tool(args: &[&str]) -> Output {
    let mut all = vec!["-r", READER];
    all.extend_from_slice(args);
    run("yubico-piv-tool", &all)
}

pub fn succeeds(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed:\n{}{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output) + &stderr(&output)
}

pub fn fails(output: Output, what: &str) -> String {
    assert!(
        !output.status.success(),
        "{what} should have failed:\n{}{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output) + &stderr(&output)
}

/// A direct PC/SC connection to the virtual card's reader.
pub struct Pcsc {
    card: pcsc::Card,
}

impl Pcsc {
    pub fn connect() -> Self {
        let context = pcsc::Context::establish(pcsc::Scope::User).unwrap();
        let reader = CString::new(READER).unwrap();
        let card = context
            .connect(&reader, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
            .unwrap();
        let pcsc = Self { card };
        let select = CommandApdu::new(0x00, 0xA4, 0x04, 0x00)
            .with_data(vec![0xA0, 0, 0, 3, 8])
            .unwrap();
        assert_eq!(pcsc.transmit(&select).sw(), StatusWord::Success);
        pcsc
    }

    pub fn transmit(&self, command: &CommandApdu) -> ResponseApdu {
        let mut buffer = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
        let raw = self
            .card
            .transmit(&command.to_bytes(), &mut buffer)
            .unwrap();
        ResponseApdu::parse(raw).unwrap()
    }

    /// Mutual authentication with the management key, the client side computed here.
    pub fn mutual_auth(&self, algorithm: MgmtKeyAlgorithm, key: &[u8]) -> StatusWord {
        let general_auth = |template: Vec<u8>| {
            CommandApdu::new(0x00, 0x87, algorithm.id(), 0x9B)
                .with_data(template)
                .unwrap()
        };
        let response = self.transmit(&general_auth(vec![0x7C, 0x02, 0x80, 0x00]));
        if response.sw() != StatusWord::Success {
            return response.sw();
        }
        let body = tlv::parse_single(response.data(), Tag::new(0x7C)).unwrap();
        let witness = ecb(
            algorithm,
            key,
            tlv::find(body, Tag::new(0x80)).unwrap().unwrap(),
            false,
        );
        let mut challenge = vec![0u8; algorithm.block_len()];
        rand::thread_rng().fill_bytes(&mut challenge);
        let inner = [
            tlv::build(Tag::new(0x80), &witness),
            tlv::build(Tag::new(0x81), &challenge),
        ]
        .concat();
        let response = self.transmit(&general_auth(tlv::build(Tag::new(0x7C), &inner)));
        if response.sw() == StatusWord::Success {
            let body = tlv::parse_single(response.data(), Tag::new(0x7C)).unwrap();
            let proof = tlv::find(body, Tag::new(0x82)).unwrap().unwrap();
            assert_eq!(
                proof,
                ecb(algorithm, key, &challenge, true),
                "the card knows the key"
            );
        }
        response.sw()
    }
}

pub fn ecb(algorithm: MgmtKeyAlgorithm, key: &[u8], block: &[u8], encrypt: bool) -> Vec<u8> {
    fn run<C: BlockEncrypt + BlockDecrypt + KeyInit>(
        key: &[u8],
        block: &[u8],
        encrypt: bool,
    ) -> Vec<u8> {
        let cipher = C::new_from_slice(key).unwrap();
        let mut out = GenericArray::clone_from_slice(block);
        if encrypt {
            cipher.encrypt_block(&mut out);
        } else {
            cipher.decrypt_block(&mut out);
        }
        out.to_vec()
    }
    match algorithm {
        MgmtKeyAlgorithm::TripleDes => run::<des::TdesEde3>(key, block, encrypt),
        MgmtKeyAlgorithm::Aes128 => run::<aes::Aes128>(key, block, encrypt),
        MgmtKeyAlgorithm::Aes192 => run::<aes::Aes192>(key, block, encrypt),
        MgmtKeyAlgorithm::Aes256 => run::<aes::Aes256>(key, block, encrypt),
    }
}

/// The PEM block in a tool's output.
pub fn pem_block(output: &str) -> &str {
    let start = output.find("-----BEGIN").expect("PEM output");
    let end_marker = "-----END PUBLIC KEY-----";
    let end = output.find(end_marker).expect("PEM end") + end_marker.len();
    &output[start..end]
}
