//! The fleet under test as processes of the run's own: one control plane
//! (`cardfleet serve`) and one worker process per simulated rack, each
//! logging to a file of the run's directory, which the leak scan reads.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// What every process of the fleet is configured with.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub run_dir: PathBuf,
    pub database_url: String,
    pub amqp_url: String,
    pub api_port: u16,
    pub encryption_key: String,
    pub master_key: String,
    pub slots: u16,
}

fn log_file(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok((file.try_clone()?.into(), file.into()))
}

fn myself() -> anyhow::Result<PathBuf> {
    if let Some(copy) = PINNED.get() {
        return Ok(copy.clone());
    }
    std::env::current_exe().context("cannot find this program's own path")
}

/// Copies this program into the run's directory and re-executes that copy
/// from then on: a rebuild during the run (which replaces the file) cannot
/// keep a killed worker from starting again.
pub fn pin_own_executable(run_dir: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find this program's own path")?;
    let copy = run_dir.join("cardfleet-chaos");
    std::fs::copy(&exe, &copy).with_context(|| format!("copying {}", exe.display()))?;
    PINNED.set(copy).ok();
    Ok(())
}

static PINNED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Runs `cardfleet <args>` (this program re-executed as the control plane's
/// command line) against the fleet's database and returns its stdout.
pub fn cardfleet_cli(config: &FleetConfig, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(myself()?)
        .arg("cardfleet")
        .args(args)
        .envs(control_plane_env(config))
        .current_dir(&config.run_dir)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "cardfleet {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn control_plane_env(config: &FleetConfig) -> Vec<(&'static str, String)> {
    vec![
        ("CARDFLEET__DATABASE__URL", config.database_url.clone()),
        ("CARDFLEET__DATABASE__MAX_CONNECTIONS", "48".into()),
        ("CARDFLEET__AMQP__URL", config.amqp_url.clone()),
        ("CARDFLEET__AMQP__RECONNECT_MAX_SECONDS", "2".into()),
        (
            "CARDFLEET__HTTP__LISTEN",
            format!("127.0.0.1:{}", config.api_port),
        ),
        // A thousand clients share one token here: the per-token limit
        // would answer most of them 429 and test nothing else.
        ("CARDFLEET__HTTP__RATE_LIMIT__PER_SECOND", "1000000".into()),
        ("CARDFLEET__HTTP__RATE_LIMIT__BURST", "1000000".into()),
        ("CARDFLEET__METRICS__LISTEN", "127.0.0.1:0".into()),
        (
            "CARDFLEET__CREDENTIALS__ENCRYPTION_KEY",
            config.encryption_key.clone(),
        ),
        (
            "CARDFLEET__CREDENTIALS__MASTER_KEY",
            config.master_key.clone(),
        ),
        ("CARDFLEET__DISPATCHER__POLL_INTERVAL_MS", "200".into()),
        ("CARDFLEET__LOG__FILTER", "info".into()),
        // Plain log files: colour codes would split the words the leak scan reads.
        ("NO_COLOR", "1".into()),
    ]
}

/// The control plane process.
#[derive(Debug)]
pub struct ControlPlane {
    child: Child,
    pub log: PathBuf,
    /// Times it was found exited and started again.
    pub restarts: u32,
}

impl ControlPlane {
    pub fn start(config: &FleetConfig) -> anyhow::Result<Self> {
        let log = config.run_dir.join("logs").join("control-plane.log");
        Ok(Self {
            child: spawn_control_plane(config, &log)?,
            log,
            restarts: 0,
        })
    }

    /// Starts it again if it exited (it should not, whatever happens to
    /// the database or the broker); true when it had to.
    pub fn ensure_running(&mut self, config: &FleetConfig) -> anyhow::Result<bool> {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            self.child = spawn_control_plane(config, &self.log)?;
            self.restarts += 1;
            return Ok(true);
        }
        Ok(false)
    }

    pub fn stop(mut self) {
        terminate(&mut self.child);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_control_plane(config: &FleetConfig, log: &Path) -> anyhow::Result<Child> {
    let (out, err) = log_file(log)?;
    Command::new(myself()?)
        .args(["cardfleet", "serve"])
        .envs(control_plane_env(config))
        .current_dir(&config.run_dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("starting the control plane")
}

/// One simulated rack's worker process and what survives it on disk.
#[derive(Debug)]
pub struct Worker {
    pub rack: String,
    child: Option<Child>,
    pub csv: PathBuf,
    pub state_dir: PathBuf,
    pub journal_dir: PathBuf,
    pub key_file: PathBuf,
    pub log: PathBuf,
    enrollment_token: String,
}

impl Worker {
    pub fn new(
        config: &FleetConfig,
        rack: &str,
        csv: PathBuf,
        enrollment_token: String,
    ) -> anyhow::Result<Self> {
        let dir = config.run_dir.join("racks").join(rack);
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            rack: rack.to_owned(),
            child: None,
            csv,
            state_dir: config.run_dir.join("chips"),
            journal_dir: dir.join("journal"),
            key_file: dir.join("rack.key"),
            log: config.run_dir.join("logs").join(format!("{rack}.log")),
            enrollment_token,
        })
    }

    /// Starts the worker process; the first start enrols the rack's key
    /// with the enrollment token, later ones find the enrolment recorded.
    pub fn start(&mut self, config: &FleetConfig) -> anyhow::Result<()> {
        let (out, err) = log_file(&self.log)?;
        let child = Command::new(myself()?)
            .arg("worker")
            .env("CARDFLEET__WORKER__RACK_ID", &self.rack)
            .env("CARDFLEET__WORKER__KEY_FILE", &self.key_file)
            .env("CARDFLEET__WORKER__JOURNAL_DIR", &self.journal_dir)
            .env(
                "CARDFLEET__WORKER__API_URL",
                format!("http://127.0.0.1:{}", config.api_port),
            )
            .env("CARDFLEET__WORKER__API_INSECURE", "true")
            .env(
                "CARDFLEET__WORKER__ENROLLMENT_TOKEN",
                &self.enrollment_token,
            )
            .env("CARDFLEET__WORKER__HEARTBEAT_INTERVAL_SECONDS", "1")
            .env("CARDFLEET__WORKER__RETRY_BACKOFF_MS", "50")
            .env("CARDFLEET__WORKER__CARD_WAIT_SECONDS", "5")
            .env("CARDFLEET__AMQP__URL", &config.amqp_url)
            .env("CARDFLEET__AMQP__RECONNECT_MAX_SECONDS", "2")
            .env("CARDFLEET__READER__SLOTS", config.slots.to_string())
            .env("CARDFLEET__READER__LOAD_FROM", &self.csv)
            .env("CARDFLEET__SIMULATED__STATE_DIR", &self.state_dir)
            .env("CARDFLEET__SIMULATED__REINSERT_MS", "200")
            .env("CARDFLEET__METRICS__LISTEN", "127.0.0.1:0")
            .env("CARDFLEET__LOG__FILTER", "info")
            .env("NO_COLOR", "1")
            .current_dir(&config.run_dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting a worker")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn enrollment_token(&self) -> &str {
        &self.enrollment_token
    }

    /// SIGKILL: the worker dies mid-card, its unacked jobs go back to the queue.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again if it exited on its own; true when it had to.
    pub fn ensure_running(&mut self, config: &FleetConfig) -> anyhow::Result<bool> {
        let exited = match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
            None => false,
        };
        if exited {
            self.child = None;
            self.start(config)?;
        }
        Ok(exited)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGTERM, then SIGKILL if it has not exited within 30 s.
fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}
