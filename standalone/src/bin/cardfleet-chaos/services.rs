//! The services a chaos run restarts: by default a private PostgreSQL
//! cluster and a private RabbitMQ node of the run's own (other ports, data
//! in the run's directory, killed when the run ends), never the machine's
//! shared ones; or a given fleet's, restarted by commands the operator names.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// A port free on loopback right now (the kernel's choice).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn ids(user: &str) -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = Command::new("id").args([flag, user]).output()?;
        if !out.status.success() {
            bail!("no user {user} on this machine");
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Runs `program args` as `user`, bounded by `timeout`; fails with its output.
fn run_as(user: &str, program: &Path, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
    let out = Command::new("timeout")
        .arg(timeout.as_secs().to_string())
        .args([
            "setpriv",
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
        ])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} {args:?}: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How the run restarts the database and the broker.
pub trait Restartable {
    fn restart(&mut self) -> anyhow::Result<()>;
    fn describe(&self) -> String;
}

/// A PostgreSQL cluster of the run's own, `initdb` in the run's directory,
/// run as the `postgres` user on a port of its own, trusting loopback.
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
}

impl PrivatePostgres {
    pub fn start(run_dir: &Path) -> anyhow::Result<Self> {
        let bin = postgres_bin()?;
        let dir = run_dir.join("postgres");
        std::fs::create_dir_all(&dir)?;
        let (uid, gid) = ids("postgres")?;
        chown_tree(&dir, uid, gid)?;
        let data = dir.join("data");
        run_as(
            "postgres",
            &bin.join("initdb"),
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            Duration::from_secs(120),
        )?;
        let pg = Self {
            bin,
            dir,
            port: free_port()?,
        };
        pg.ctl(&["start", "-w", "-t", "120"])?;
        Ok(pg)
    }

    fn ctl(&self, action: &[&str]) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        let log = self.dir.join("postgres.log");
        // Fsync off: a restart here kills processes, not the machine, and
        // the operating system keeps what PostgreSQL wrote.
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=200",
            self.port,
            path_str(&self.dir)?
        );
        let mut args = vec![
            "-D",
            path_str(&data)?,
            "-l",
            path_str(&log)?,
            "-o",
            &options,
        ];
        args.extend_from_slice(action);
        run_as(
            "postgres",
            &self.bin.join("pg_ctl"),
            &args,
            Duration::from_secs(180),
        )
        .map(|_| ())
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn stop(&self) {
        let _ = self.ctl(&["stop", "-m", "immediate"]);
    }
}

impl Restartable for PrivatePostgres {
    /// `pg_ctl restart -m immediate`: every backend dies at once, as on a
    /// crash, and the server recovers from its WAL.
    fn restart(&mut self) -> anyhow::Result<()> {
        self.ctl(&["restart", "-m", "immediate", "-w", "-t", "180"])
    }
    fn describe(&self) -> String {
        format!(
            "private PostgreSQL on 127.0.0.1:{} (pg_ctl restart -m immediate)",
            self.port
        )
    }
}

fn postgres_bin() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL server binaries not found under /usr/lib/postgresql")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no initdb under /usr/lib/postgresql/*/bin")
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("a non-UTF-8 path")
}

/// A RabbitMQ node of the run's own, started as the `rabbitmq` user (it
/// shares the machine's Erlang cookie and epmd) on ports of its own, with
/// its data in the run's directory.
#[derive(Debug)]
pub struct PrivateRabbit {
    pub name: String,
    dir: PathBuf,
    pub port: u16,
    dist_port: u16,
    child: Option<Child>,
}

impl PrivateRabbit {
    pub fn start(run_dir: &Path) -> anyhow::Result<Self> {
        let (uid, gid) = ids("rabbitmq")?;
        let port = free_port()?;
        let dist_port = free_port()?;
        let dir = run_dir.join("rabbitmq");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{port}\n\
                 disk_free_limit.absolute = 10MB\n\
                 log.file.level = warning\n"
            ),
        )?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
        chown_tree(&dir, uid, gid)?;
        let mut node = Self {
            name: format!("cf-chaos-{port}@localhost"),
            dir,
            port,
            dist_port,
            child: None,
        };
        node.boot()?;
        Ok(node)
    }

    fn boot(&mut self) -> anyhow::Result<()> {
        let dir = &self.dir;
        // The killed VM's pid file would be read half-rewritten by `wait`.
        let _ = std::fs::remove_file(dir.join("pid"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("console.log"))?;
        let child = Command::new("setpriv")
            .args([
                "--reuid=rabbitmq",
                "--regid=rabbitmq",
                "--init-groups",
                "/usr/lib/rabbitmq/bin/rabbitmq-server",
            ])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/var/lib/rabbitmq")
            .env("LANG", "C.UTF-8")
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .context("setpriv starts rabbitmq-server")?;
        self.child = Some(child);
        let pid = self.dir.join("pid");
        let out = Command::new("timeout")
            .args(["200", "rabbitmqctl", "-n", &self.name, "wait"])
            .arg(&pid)
            .args(["--timeout", "180"])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "RabbitMQ node {} did not start: {}{} (see {})",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.dir.join("console.log").display()
            );
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// SIGKILL to the node's process group: the Erlang VM dies at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
    }
}

impl Restartable for PrivateRabbit {
    /// Killed (SIGKILL) and booted again on the same data: quorum queues
    /// come back from their logs.
    fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.boot()
    }
    fn describe(&self) -> String {
        format!(
            "private RabbitMQ node {} on 127.0.0.1:{} (SIGKILL, then booted on the same data)",
            self.name, self.port
        )
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A service of a given fleet, restarted by a shell command of the operator's.
#[derive(Debug)]
pub struct External {
    pub what: &'static str,
    pub command: String,
}

impl Restartable for External {
    fn restart(&mut self) -> anyhow::Result<()> {
        let status = Command::new("sh")
            .args(["-c", &self.command])
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("running the {} restart command", self.what))?;
        if !status.success() {
            bail!("{} restart command failed: {status}", self.what);
        }
        Ok(())
    }
    fn describe(&self) -> String {
        format!("{} restarted by `{}`", self.what, self.command)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
