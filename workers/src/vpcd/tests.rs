//! vpcd bridge tests against an in-process stand-in for vpcd: framing, control messages,
//! state saving and reconnection.

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::piv::{ATR, PersistentState};

/// The vpcd side of a connection.
struct FakeVpcd {
    stream: TcpStream,
}

impl FakeVpcd {
    fn accept(listener: &TcpListener) -> Self {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Self { stream }
    }

    fn send(&mut self, payload: &[u8]) {
        write_frame(&mut self.stream, payload).unwrap();
    }

    fn exchange(&mut self, payload: &[u8]) -> Vec<u8> {
        self.send(payload);
        read_frame(&mut self.stream)
            .unwrap()
            .expect("a reply")
            .to_vec()
    }
}

fn start(
    config: VirtualCardConfig,
) -> (Arc<AtomicBool>, thread::JoinHandle<Result<(), VpcdError>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let handle = thread::spawn(move || run_virtual_card(&config, &flag));
    (stop, handle)
}

fn config(listener: &TcpListener, state_dir: &std::path::Path) -> VirtualCardConfig {
    VirtualCardConfig {
        state_dir: Some(state_dir.to_path_buf()),
        chip_serial: Some(4242),
        max_backoff: Duration::from_millis(50),
        ..VirtualCardConfig::new(listener.local_addr().unwrap().to_string())
    }
}

const SELECT: &[u8] = &[0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08];
const EMPTY_VERIFY: &[u8] = &[0x00, 0x20, 0x00, 0x80];
const WRONG_PIN: &[u8] = &[
    0x00, 0x20, 0x00, 0x80, 0x08, b'9', b'9', b'9', b'9', b'9', b'9', 0xFF, 0xFF,
];

fn sw(response: &[u8]) -> u16 {
    u16::from_be_bytes([response[response.len() - 2], response[response.len() - 1]])
}

#[test]
fn the_card_answers_vpcd_saves_state_and_reconnects() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (stop, handle) = start(config(&listener, dir.path()));

    let mut vpcd = FakeVpcd::accept(&listener);
    assert_eq!(vpcd.exchange(&[CTRL_ATR]), ATR);
    vpcd.send(&[CTRL_ON]);
    assert_eq!(sw(&vpcd.exchange(SELECT)), 0x9000);
    assert_eq!(sw(&vpcd.exchange(WRONG_PIN)), 0x63C2);
    let saved = StateStore::open(dir.path())
        .unwrap()
        .load()
        .unwrap()
        .unwrap();
    assert_eq!(
        saved.pin_retries().remaining,
        2,
        "saved before the response was sent"
    );
    assert_eq!(saved.options().chip_serial, 4242);
    drop(vpcd);

    // vpcd went away and came back: the card reconnects, powered down in between.
    let mut vpcd = FakeVpcd::accept(&listener);
    assert_eq!(
        sw(&vpcd.exchange(EMPTY_VERIFY)),
        0x6D00,
        "nothing selected after reinsertion"
    );
    assert_eq!(sw(&vpcd.exchange(SELECT)), 0x9000);
    assert_eq!(sw(&vpcd.exchange(EMPTY_VERIFY)), 0x63C2);
    vpcd.send(&[CTRL_RESET]);
    assert_eq!(sw(&vpcd.exchange(EMPTY_VERIFY)), 0x6D00, "reset deselects");

    stop.store(true, Ordering::Relaxed);
    drop(vpcd);
    drop(listener);
    handle.join().unwrap().unwrap();
}

#[test]
fn a_restarted_card_continues_from_its_saved_state() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut first = config(&listener, dir.path());
    let (stop, handle) = start(first.clone());
    let mut vpcd = FakeVpcd::accept(&listener);
    vpcd.exchange(SELECT);
    vpcd.exchange(WRONG_PIN);
    stop.store(true, Ordering::Relaxed);
    drop(vpcd);
    handle.join().unwrap().unwrap();

    // Different options on restart do not change a saved card.
    first.chip_serial = Some(1);
    first.extensions = false;
    let (stop, handle) = start(first);
    let mut vpcd = FakeVpcd::accept(&listener);
    vpcd.exchange(SELECT);
    assert_eq!(sw(&vpcd.exchange(EMPTY_VERIFY)), 0x63C2);
    assert_eq!(
        vpcd.exchange(&[0x00, 0xF8, 0x00, 0x00]),
        [0x00, 0x00, 0x10, 0x92, 0x90, 0x00]
    );
    stop.store(true, Ordering::Relaxed);
    drop(vpcd);
    drop(listener);
    handle.join().unwrap().unwrap();
}

#[test]
fn a_new_card_without_a_state_dir_gets_the_requested_options() {
    let config = VirtualCardConfig {
        chip_serial: Some(7),
        extensions: false,
        numeric_pins_only: true,
        mgmt_key_algorithms: vec![MgmtKeyAlgorithm::Aes192, MgmtKeyAlgorithm::Aes256],
        ..VirtualCardConfig::new("127.0.0.1:1")
    };
    let card = load_or_create(&config, None).unwrap();
    let options = card.options();
    assert_eq!(
        (
            options.chip_serial,
            options.extensions,
            options.numeric_pins_only
        ),
        (7, false, true)
    );
    assert_eq!(options.initial_mgmt_key_algorithm, MgmtKeyAlgorithm::Aes192);
    let random = load_or_create(&VirtualCardConfig::new("127.0.0.1:1"), None).unwrap();
    assert_ne!(random.options().chip_serial, 0);
}

#[test]
fn invalid_options_are_refused() {
    let config = VirtualCardConfig {
        mgmt_key_algorithms: vec![],
        ..VirtualCardConfig::new("127.0.0.1:1")
    };
    assert!(matches!(
        load_or_create(&config, None),
        Err(VpcdError::Options(_))
    ));
}

#[test]
fn frames_are_length_prefixed_and_a_close_between_frames_is_clean() {
    let mut buffer = Vec::new();
    write_frame(&mut buffer, &[0x90, 0x00]).unwrap();
    assert_eq!(buffer, [0x00, 0x02, 0x90, 0x00]);
    let mut reader = io::Cursor::new(buffer);
    assert_eq!(
        read_frame(&mut reader).unwrap().unwrap().as_slice(),
        [0x90, 0x00]
    );
    assert!(
        read_frame(&mut reader).unwrap().is_none(),
        "end of stream between frames"
    );
    let mut torn = io::Cursor::new(vec![0x00, 0x05, 0x01]);
    assert!(
        read_frame(&mut torn).is_err(),
        "end of stream inside a frame"
    );
    assert!(write_frame(&mut Vec::new(), &vec![0; 70_000]).is_err());
}

#[test]
fn saved_state_is_valid_json_with_the_card_options() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let config = VirtualCardConfig {
        chip_serial: Some(3),
        ..VirtualCardConfig::new("127.0.0.1:1")
    };
    load_or_create(&config, Some(&store)).unwrap();
    let text = std::fs::read_to_string(store.path()).unwrap();
    let state: PersistentState = serde_json::from_str(&text).unwrap();
    assert_eq!(state.options().chip_serial, 3);
}
