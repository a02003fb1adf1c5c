//! A three-node RabbitMQ cluster on this machine, quorum queues replicated
//! across it, and the fleet given all three nodes as a list of AMQP URLs:
//! a 5,000-card batch survives one node stopped and started again mid-batch,
//! and a second 5,000-card batch survives the node holding the leader of its
//! rack queue being killed. Every card ends `unassigned`: 0 lost, 0 stuck.
//!
//! The nodes are this test's own (names `cf-cluster-N@localhost`, AMQP ports
//! 5781-5783, distribution ports 25781-25783, data in a temporary directory),
//! started as the `rabbitmq` user so they share the shared broker's Erlang
//! cookie and epmd, and killed (process group) when the test ends, passing
//! or not. Starting three brokers loads the whole machine, so the test is
//! ignored in the main run and `scripts/test` runs it in the serial group.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cardfleet_worker::rack::simulated::SimCard;
use serde_json::json;
use support::workers::*;
use support::*;

const CARDS: u32 = 5000;
const NODES: u16 = 3;
const FIRST_AMQP_PORT: u16 = 5781;
const FIRST_DIST_PORT: u16 = 25781;
/// Longest a node may take to boot on a loaded machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const BATCH_TIMEOUT: Duration = Duration::from_secs(240);

fn node_name(index: u16) -> String {
    format!("cf-cluster-{index}@localhost")
}

/// `rabbitmqctl -n NODE args…`, bounded by `timeout` (coreutils).
fn ctl(node: &str, args: &[&str], timeout: Duration) -> Output {
    Command::new("timeout")
        .arg(timeout.as_secs().to_string())
        .args(["rabbitmqctl", "-n", node])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("rabbitmqctl runs")
}

fn ctl_ok(node: &str, args: &[&str], timeout: Duration) -> String {
    let out = ctl(node, args, timeout);
    assert!(
        out.status.success(),
        "rabbitmqctl -n {node} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rabbitmq_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "rabbitmq"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "no rabbitmq user: install rabbitmq-server"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid, gid);
        }
    }
}

struct Node {
    index: u16,
    name: String,
    dir: PathBuf,
    /// The process group of the node's start script and Erlang VM.
    child: Option<Child>,
}

impl Node {
    fn amqp_port(&self) -> u16 {
        FIRST_AMQP_PORT + self.index - 1
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    fn start(&mut self) {
        let dir = &self.dir;
        let out = std::fs::File::create(dir.join("console.log")).unwrap();
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
            .env(
                "RABBITMQ_DIST_PORT",
                (FIRST_DIST_PORT + self.index - 1).to_string(),
            )
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", self.pid_file())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("setpriv starts rabbitmq-server");
        self.child = Some(child);
    }

    fn wait_running(&self) {
        let pid = self.pid_file();
        ctl_ok(
            &self.name,
            &[
                "wait",
                pid.to_str().unwrap(),
                "--timeout",
                &BOOT_TIMEOUT.as_secs().to_string(),
            ],
            BOOT_TIMEOUT + Duration::from_secs(10),
        );
    }

    /// SIGKILL to the node's whole process group: the Erlang VM dies
    /// without a goodbye, as on a power loss.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
    }
}

/// The three nodes; dropping it kills them and removes their data.
struct Cluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

impl Cluster {
    fn start() -> Self {
        let (uid, gid) = rabbitmq_ids();
        // A node left over by an earlier run of this test that was itself
        // killed: stop it by its name before taking its ports.
        for index in 1..=NODES {
            let _ = ctl(&node_name(index), &["stop"], Duration::from_secs(30));
        }
        let dir = std::env::temp_dir().join(format!(
            "cf-rabbitmq-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir(&dir).unwrap();
        let mut nodes = Vec::new();
        for index in 1..=NODES {
            let node_dir = dir.join(format!("node-{index}"));
            std::fs::create_dir(&node_dir).unwrap();
            std::fs::write(
                node_dir.join("rabbitmq.conf"),
                format!(
                    "listeners.tcp.default = 127.0.0.1:{}\n\
                     disk_free_limit.absolute = 10MB\n\
                     log.file.level = warning\n",
                    FIRST_AMQP_PORT + index - 1
                ),
            )
            .unwrap();
            std::fs::write(node_dir.join("enabled_plugins"), "[].\n").unwrap();
            std::fs::write(node_dir.join("rabbitmq-env.conf"), "").unwrap();
            nodes.push(Node {
                index,
                name: node_name(index),
                dir: node_dir,
                child: None,
            });
        }
        chown_tree(&dir, uid, gid);
        let mut cluster = Cluster { nodes, dir };
        let started = Instant::now();
        for node in &mut cluster.nodes {
            node.start();
        }
        for node in &cluster.nodes {
            node.wait_running();
        }
        let first = cluster.nodes[0].name.clone();
        for node in &cluster.nodes[1..] {
            let t = Duration::from_secs(120);
            ctl_ok(&node.name, &["stop_app"], t);
            ctl_ok(&node.name, &["reset"], t);
            ctl_ok(&node.name, &["join_cluster", &first], t);
            ctl_ok(&node.name, &["start_app"], t);
        }
        let status = ctl_ok(
            &first,
            &["cluster_status", "--formatter", "json"],
            Duration::from_secs(60),
        );
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        let running = status["running_nodes"].as_array().map_or(0, Vec::len);
        assert_eq!(running, NODES as usize, "cluster status: {status}");
        println!("{NODES}-node cluster up in {:.0?}", started.elapsed());
        cluster
    }

    /// Every node's AMQP URL, comma-separated: what `amqp.url` takes.
    fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("amqp://guest:guest@127.0.0.1:{}/%2f", n.amqp_port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn node(&mut self, name: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    /// The node holding the leader of a quorum queue, asked of `via`, if
    /// the queue has one right now.
    fn leader_of(&self, queue: &str, via: &str) -> Option<String> {
        let out = ctl_ok(
            via,
            &[
                "list_queues",
                "-q",
                "--no-table-headers",
                "name",
                "type",
                "leader",
            ],
            Duration::from_secs(60),
        );
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(queue))?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.get(1), Some(&"quorum"), "{line}");
        fields.get(2).map(|leader| (*leader).to_owned())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(app.store.postgres_pool().expect("PostgreSQL store"))
        .await
        .unwrap()
}

async fn succeeded(app: &TestApp) -> i64 {
    count(app, "SELECT count(*) FROM jobs WHERE state = 'succeeded'").await
}

/// A control plane and one 32-slot simulated worker on the cluster, with
/// `CARDS` produced cards whose batch has been submitted.
async fn fleet_on(urls: &str, rack: &str, first_serial: u32) -> (TestApp, TestWorker, String) {
    let amqp = [("amqp.url", urls.to_owned())];
    let app = spawn_app_with(&cardfleet::app::Component::ALL, &amqp).await;
    let serials = first_serial..first_serial + CARDS;
    import_serials(&app, serials.clone()).await;
    app.enable().await;
    let worker = TestWorker::start(&app, rack, 32, serials.map(SimCard::new).collect(), &amqp);
    let r = app
        .post(
            "/v1/initializations",
            json!({ "filter": { "type": "temporary", "state": "produced", "limit": CARDS } }),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["accepted"].as_array().unwrap().len(), CARDS as usize);
    let batch = r.body["batch_id"].as_str().unwrap().to_owned();
    (app, worker, batch)
}

/// Every card encoded once and recorded: 0 lost, 0 stuck.
async fn assert_nothing_lost_or_stuck(app: &TestApp, batch: &str) {
    let status = wait_finished(app, batch, BATCH_TIMEOUT).await;
    assert_eq!(status["counts"]["succeeded"], CARDS, "{status}");
    let unassigned = count(app, "SELECT count(*) FROM cards WHERE state = 'unassigned'").await;
    assert_eq!(unassigned, i64::from(CARDS), "cards lost");
    let live = count(
        app,
        "SELECT count(*) FROM jobs WHERE state NOT IN ('succeeded', 'failed', 'cancelled')",
    )
    .await;
    assert_eq!(live, 0, "jobs stuck");
    assert_eq!(
        count(app, "SELECT count(*) FROM outbox").await,
        0,
        "outbox not drained"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "starts a 3-node RabbitMQ cluster; scripts/test runs it in the serial group"]
async fn a_cluster_loses_no_card_when_a_node_stops_or_the_rack_queue_leader_is_killed() {
    // Reconnects and their causes, for whoever reads a failure.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        ))
        .with_test_writer()
        .try_init();
    let started = Instant::now();
    let mut cluster = Cluster::start();
    let urls = cluster.urls();

    // 1. The node every client connected to first stops mid-batch, the
    //    batch goes on through the others, and the node comes back.
    let (app, worker, batch) = fleet_on(&urls, "rack-c1", 3_000_001).await;
    eventually(
        Duration::from_secs(300),
        "a tenth of the cards encoded",
        || async { succeeded(&app).await >= i64::from(CARDS / 10) },
    )
    .await;
    let first = cluster.nodes[0].name.clone();
    ctl_ok(&first, &["stop_app"], Duration::from_secs(120));
    let at_stop = succeeded(&app).await;
    println!("run 1: {first} stopped with {at_stop} of {CARDS} cards encoded");
    assert!(
        at_stop < i64::from(CARDS),
        "the stop did not hit the middle of the batch"
    );
    eventually(
        Duration::from_secs(180),
        "progress without the stopped node",
        || async {
            succeeded(&app).await >= at_stop + 200 || succeeded(&app).await == i64::from(CARDS)
        },
    )
    .await;
    ctl_ok(&first, &["start_app"], Duration::from_secs(180));
    assert_nothing_lost_or_stuck(&app, &batch).await;
    worker.stop().await;
    drop(app);
    println!(
        "run 1: {CARDS} of {CARDS} cards unassigned after {:.0?}",
        started.elapsed()
    );

    // 2. The node holding the leader of the rack queue is killed mid-batch.
    let (app, worker, batch) = fleet_on(&urls, "rack-c2", 3_100_001).await;
    eventually(
        Duration::from_secs(300),
        "a tenth of the cards encoded",
        || async { succeeded(&app).await >= i64::from(CARDS / 10) },
    )
    .await;
    let leader = cluster
        .leader_of("cardfleet.rack.rack-c2", &first)
        .expect("the rack queue has a leader");
    assert!(leader.starts_with("cf-cluster-"), "leader {leader}");
    cluster.node(&leader).kill();
    let at_kill = succeeded(&app).await;
    println!("run 2: rack queue leader {leader} killed with {at_kill} of {CARDS} cards encoded");
    assert!(
        at_kill < i64::from(CARDS),
        "the kill did not hit the middle of the batch"
    );
    let survivor = cluster
        .nodes
        .iter()
        .find(|n| n.name != leader)
        .map(|n| n.name.clone())
        .unwrap();
    let mut new_leader = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while new_leader.is_none() && Instant::now() < deadline {
        new_leader = cluster
            .leader_of("cardfleet.rack.rack-c2", &survivor)
            .filter(|l| *l != leader && l.starts_with("cf-cluster-"));
        if new_leader.is_none() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let new_leader = new_leader.expect("a surviving node took over the rack queue's leader");
    assert_nothing_lost_or_stuck(&app, &batch).await;
    worker.stop().await;
    drop(app);
    println!(
        "run 2: {CARDS} of {CARDS} cards unassigned, leader now {new_leader}; whole test {:.0?}",
        started.elapsed()
    );
}
