//! The PC/SC stack for these tests: pcscd with vpcd's two readers, tools checked and run
//! with timeouts, and virtual cards served in this process.

use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use cardfleet_worker::engine;
use cardfleet_worker::piv::StateStore;
use cardfleet_worker::rack::pcsc::CardConnection;
use cardfleet_worker::vpcd::{self, VirtualCardConfig};

/// vpcd's default reader: one slot per port.
pub const SLOTS: [(&str, &str); 2] = [
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
/// vpcd serves one card per port: under plain `cargo test` these tests take turns.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
pub const WAIT: Duration = Duration::from_secs(30);

/// A virtual card served in this process on a vpcd port, pulled when dropped.
///
/// `vpcd::run_virtual_card` only looks at its stop flag between connections and vpcd never
/// closes one, so this keeps the connection itself and closes it to pull the card.
pub struct AttachedCard {
    pub serial: u32,
    pub reader: &'static str,
    socket: TcpStream,
    thread: Option<thread::JoinHandle<()>>,
}

impl AttachedCard {
    pub fn attach(addr: &str, reader: &'static str, serial: u32, dir: &Path) -> Self {
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

    pub fn pull(mut self) {
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

pub fn run(tool: &str, args: &[&str]) -> Output {
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

pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Tools present, pcscd running with both vpcd readers, and no card left in them.
pub fn prepare() {
    for (tool, package) in TOOLS {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap();
        assert!(
            found.status.success(),
            "{tool} is missing: install the Debian package `{package}`"
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
pub fn wait_for_empty_reader(reader: &str) {
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
