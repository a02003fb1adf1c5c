//! A worker killed with SIGKILL mid-batch and started again: every card ends
//! `unassigned` with credentials that verify on the chip.
//!
//! The worker runs as a child process (this test binary, re-executed to run
//! [`worker_child_process`]) with simulated cards whose state lives on disk,
//! so the restarted worker finds the half-encoded chips as they were.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use cardfleet_worker::piv::{StateStore, VirtualPivCard};
use support::workers::*;
use support::*;

const CARDS: u32 = 40;

fn spawn_worker(amqp_url: &str, csv: &std::path::Path, state_dir: &std::path::Path) -> Child {
    spawn_worker_with(amqp_url, csv, state_dir, &[])
}

fn spawn_worker_with(
    amqp_url: &str,
    csv: &std::path::Path,
    state_dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .envs(extra.iter().copied())
        .args([
            "--exact",
            "worker_child_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CARDFLEET_TEST_WORKER_CHILD", "1")
        .env("CARDFLEET__AMQP__URL", amqp_url)
        .env("CARDFLEET__AMQP__RECONNECT_MAX_SECONDS", "1")
        .env("CARDFLEET__WORKER__RACK_ID", "rack-k")
        .env("CARDFLEET__WORKER__HEARTBEAT_INTERVAL_SECONDS", "1")
        .env("CARDFLEET__READER__SLOTS", "8")
        .env("CARDFLEET__READER__LOAD_FROM", csv)
        .env("CARDFLEET__SIMULATED__STATE_DIR", state_dir)
        // Made and enrolled by the test with `enrolled_key_file`.
        .env(
            "CARDFLEET__WORKER__KEY_FILE",
            state_dir.parent().unwrap().join("rack-k.key"),
        )
        .env(
            "CARDFLEET__SIMULATED__LATENCY_MS",
            extra_or(extra, "CARDFLEET__SIMULATED__LATENCY_MS", "10"),
        )
        .env("CARDFLEET__METRICS__LISTEN", "127.0.0.1:0")
        .spawn()
        .unwrap()
}

fn extra_or<'a>(extra: &[(&'a str, &'a str)], key: &str, default: &'a str) -> &'a str {
    extra
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(default, |(_, v)| *v)
}

/// Not a test of its own: the worker process of the test below. Run alone,
/// without its environment, it exits at once.
#[tokio::test]
#[ignore = "the worker child of a_worker_killed_mid_batch_finishes_every_card_after_a_restart"]
async fn worker_child_process() {
    if std::env::var_os("CARDFLEET_TEST_WORKER_CHILD").is_none() {
        return;
    }
    let settings = cardfleet_worker::settings::WorkerSettings::load(None, &[]).unwrap();
    // As the worker binary does: SIGTERM drains in-flight cards.
    cardfleet_worker::app::run(settings, cardfleet_worker::app::cancel_on_signal())
        .await
        .unwrap();
}

/// A production CSV of `serials` and a directory for their chips' state,
/// under a fresh temporary directory: (directory, csv, state directory).
fn card_files(name: &str, serials: impl Iterator<Item = u32>) -> (PathBuf, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("cf-{name}-{}", uuid::Uuid::new_v4()));
    let state_dir = dir.join("cards");
    std::fs::create_dir_all(&state_dir).unwrap();
    let csv = dir.join("cards.csv");
    let mut text = String::from("card_number,chip_serial,card_type,profile\n");
    for s in serials {
        text.push_str(&format!("TC-{s},{s},temporary,temporary-piv\n"));
    }
    std::fs::write(&csv, text).unwrap();
    (dir, csv, state_dir)
}

/// The chip with `serial` as the simulated rack left it on disk.
fn chip_on_disk(state_dir: &Path, serial: u32) -> VirtualPivCard {
    let store = StateStore::open(state_dir.join(serial.to_string())).unwrap();
    VirtualPivCard::from_state(store.load().unwrap().unwrap())
}

#[tokio::test]
async fn a_worker_killed_mid_batch_finishes_every_card_after_a_restart() {
    let app = spawn_app().await;
    let serials = 201..=(200 + CARDS);
    import_serials(&app, serials.clone()).await;
    app.enable().await;
    let (dir, csv, state_dir) = card_files("restart", serials.clone());
    enrolled_key_file(&app.store, "rack-k", &dir).await;

    let mut worker = spawn_worker(&app.vhost.url(), &csv, &state_dir);
    let batch = app.submit_all(CARDS as usize).await;
    eventually(Duration::from_secs(120), "some cards done", || async {
        count(&app, "succeeded").await >= 5
    })
    .await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    let at_kill = count(&app, "succeeded").await;
    println!("worker killed with {at_kill} of {CARDS} cards done");
    assert!(
        at_kill < i64::from(CARDS),
        "the kill came too late to test anything"
    );

    let mut worker = spawn_worker(&app.vhost.url(), &csv, &state_dir);
    let status = wait_finished(&app, &batch, Duration::from_secs(300)).await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_eq!(status["counts"]["succeeded"], CARDS, "{status}");

    for s in serials {
        let mut chip = chip_on_disk(&state_dir, s);
        let pin = stored_pin(&app, &s.to_string()).await;
        assert!(
            verify_pin(&mut chip, &pin),
            "stored PIN does not verify on chip {s}"
        );
        assert!(
            !verify_pin(&mut chip, "123456"),
            "factory PIN still works on chip {s}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The same on strict cards that refuse the journal object (`6A80`): the journal lives in
/// the worker's `journal_dir`, which survives the SIGKILL. Every chip ends with the PIN and
/// PUK counters it started with: no try was spent finding out what the killed worker did.
#[tokio::test]
async fn a_worker_killed_mid_card_on_cards_without_a_journal_object_spends_no_try() {
    const STRICT: u32 = 16;
    let app = spawn_app().await;
    let serials = 401..=(400 + STRICT);
    import_serials(&app, serials.clone()).await;
    app.enable().await;
    let (dir, csv, state_dir) = card_files("strict-restart", serials.clone());
    enrolled_key_file(&app.store, "rack-k", &dir).await;
    let journals = dir.join("journals");
    let journal_dir = journals.to_str().unwrap().to_owned();
    let extra = [
        ("CARDFLEET__SIMULATED__VENDOR_OBJECTS", "false"),
        ("CARDFLEET__WORKER__JOURNAL_DIR", journal_dir.as_str()),
    ];

    let mut worker = spawn_worker_with(&app.vhost.url(), &csv, &state_dir, &extra);
    let batch = app.submit_all(STRICT as usize).await;
    eventually(Duration::from_secs(120), "some cards done", || async {
        count(&app, "succeeded").await >= 2
    })
    .await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    let at_kill = count(&app, "succeeded").await;
    let journaled = std::fs::read_dir(&journals).map_or(0, |d| d.count());
    println!("worker killed with {at_kill} of {STRICT} cards done, {journaled} chips journaled");
    assert!(
        at_kill < i64::from(STRICT),
        "the kill came too late to test anything"
    );

    let mut worker = spawn_worker_with(&app.vhost.url(), &csv, &state_dir, &extra);
    let status = wait_finished(&app, &batch, Duration::from_secs(300)).await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_eq!(status["counts"]["succeeded"], STRICT, "{status}");

    for s in serials {
        let mut chip = chip_on_disk(&state_dir, s);
        assert!(
            chip.state()
                .object(cardfleet_worker::engine::JOURNAL_TAG)
                .is_none(),
            "chip {s} holds a journal object"
        );
        let (pin, puk) = (chip.state().pin_retries(), chip.state().puk_retries());
        assert_eq!(pin.remaining, pin.limit, "PIN tries spent on chip {s}");
        assert_eq!(puk.remaining, puk.limit, "PUK tries spent on chip {s}");
        let stored = stored_pin(&app, &s.to_string()).await;
        assert!(
            verify_pin(&mut chip, &stored),
            "stored PIN does not verify on chip {s}"
        );
        assert!(
            std::fs::metadata(journals.join(format!("{s}.journal"))).is_ok(),
            "no worker journal for chip {s}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn count(app: &TestApp, state: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = $1")
        .bind(state)
        .fetch_one(app.store.postgres_pool().expect("PostgreSQL store"))
        .await
        .unwrap()
}

#[tokio::test]
async fn on_sigterm_a_worker_finishes_in_flight_cards_within_its_grace_and_never_acks_unfinished_ones()
 {
    let app = spawn_app().await;
    let serials = 301..=316u32;
    import_serials(&app, serials.clone()).await;
    app.enable().await;
    let (dir, csv, state_dir) = card_files("sigterm", serials.clone());
    enrolled_key_file(&app.store, "rack-k", &dir).await;
    let batch = app.submit_all(16).await;

    // Slow cards (about 1.5 s each) and a generous grace: the cards being
    // encoded when SIGTERM arrives are finished and reported.
    let mut worker = spawn_worker_with(
        &app.vhost.url(),
        &csv,
        &state_dir,
        &[
            ("CARDFLEET__SIMULATED__LATENCY_MS", "40"),
            ("CARDFLEET__WORKER__SHUTDOWN_GRACE_SECONDS", "30"),
        ],
    );
    eventually(Duration::from_secs(60), "cards encoding", || async {
        count(&app, "encoding").await > 0
    })
    .await;
    sigterm(&worker);
    let exit = worker.wait().unwrap();
    assert!(exit.success(), "the worker did not stop cleanly: {exit}");
    // Their results were confirmed before the worker exited; the ledger
    // applies them moments later.
    eventually(
        Duration::from_secs(30),
        "in-flight cards reported",
        || async { count(&app, "encoding").await == 0 },
    )
    .await;
    let finished = count(&app, "succeeded").await;
    assert!(
        finished > 0 && finished < 16,
        "expected some but not all cards done, got {finished}"
    );

    // Very slow cards and a grace of one second: SIGTERM stops the worker
    // before its cards finish, and their jobs stay on the broker.
    let mut worker = spawn_worker_with(
        &app.vhost.url(),
        &csv,
        &state_dir,
        &[
            ("CARDFLEET__SIMULATED__LATENCY_MS", "400"),
            ("CARDFLEET__WORKER__SHUTDOWN_GRACE_SECONDS", "1"),
        ],
    );
    eventually(Duration::from_secs(60), "cards encoding again", || async {
        count(&app, "encoding").await > 0
    })
    .await;
    let before = count(&app, "succeeded").await;
    sigterm(&worker);
    worker.wait().unwrap();
    // Nothing more will come from this worker: give the ledger time to have
    // applied anything in flight, then check nothing finished.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count(&app, "succeeded").await,
        before,
        "a card finished that should have been cut off"
    );
    assert!(
        count(&app, "encoding").await > 0,
        "the cut-off cards should still be encoding"
    );

    // The next worker picks the unacked jobs up and completes every card.
    let mut worker = spawn_worker(&app.vhost.url(), &csv, &state_dir);
    let status = wait_finished(&app, &batch, Duration::from_secs(300)).await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_eq!(status["counts"]["succeeded"], 16, "{status}");
    for s in serials {
        let mut chip = chip_on_disk(&state_dir, s);
        let pin = stored_pin(&app, &s.to_string()).await;
        assert!(
            verify_pin(&mut chip, &pin),
            "stored PIN does not verify on chip {s}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
