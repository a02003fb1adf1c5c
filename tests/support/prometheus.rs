//! A real Prometheus for tests, in a temporary directory on a free loopback
//! port, scraping the test's metrics ports every second with the repo's
//! alert rules loaded; plus promtool and a reader of metrics pages.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

const MISSING: &str = "is not installed: these tests need Debian's `prometheus` package \
     (prometheus and promtool); scripts/test installs it, or run `apt-get install prometheus`";

pub fn repo_path(relative: &str) -> PathBuf {
    // The workspace root (holding Cargo.lock): standalone/'s tests share
    // this harness.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").exists())
        .unwrap_or(manifest)
        .join(relative)
}

/// Runs promtool; returns (success, stdout + stderr).
pub fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool {MISSING} ({e})"));
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A Prometheus process, killed and its directory removed on drop.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    pub base: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus scraping, every second, `jobs`: (job name, ports on 127.0.0.1).
    pub async fn start(jobs: &[(&str, Vec<u16>)]) -> Self {
        let dir = std::env::temp_dir().join(format!("cardfleet-prometheus-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\nscrape_configs:\n",
            repo_path("deploy/prometheus/rules.yml").display()
        );
        for (job, ports) in jobs {
            let targets: Vec<String> = ports.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ));
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        // Prometheus cannot report a port it picked: take a free one and
        // retry if another process grabs it first.
        let http = reqwest::Client::new();
        for _ in 0..3 {
            let port = free_port();
            let base = format!("http://127.0.0.1:{port}");
            let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", config_file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("prometheus {MISSING} ({e})"));
            if ready(&http, &base, &mut child, Duration::from_secs(60)).await {
                return Self {
                    child,
                    dir,
                    base,
                    http,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = log_of(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        panic!("prometheus did not start:\n{log}");
    }

    pub fn log(&self) -> String {
        log_of(&self.dir)
    }

    /// GETs an API path; panics unless Prometheus answers `status: success`.
    pub async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "success", "{path} {query:?}: {body}");
        body["data"].clone()
    }

    /// The series an instant query returns now.
    pub async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api("/api/v1/query", &[("query", expr)]).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value of a query that returns one series, if it does.
    pub async fn value(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr).await;
        let [series] = result.as_slice() else {
            return None;
        };
        series["value"][1].as_str()?.parse().ok()
    }

    /// Waits until every target is scraped successfully.
    pub async fn wait_targets_up(&self, n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = Value::Null;
        while tokio::time::Instant::now() < deadline {
            last = self.api("/api/v1/targets", &[]).await["activeTargets"].clone();
            let up = last
                .as_array()
                .map(|t| t.iter().filter(|t| t["health"] == "up").count())
                .unwrap_or(0);
            if up == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("targets not up after {timeout:?}: {last}\n{}", self.log());
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until Prometheus answers `/-/ready`; false if it exits or times out.
async fn ready(http: &reqwest::Client, base: &str, child: &mut Child, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(r) = http.get(format!("{base}/-/ready")).send().await
            && r.status().is_success()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Fetches a `/metrics` page.
pub async fn metrics_page(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// One sample of a metrics page.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The family: the name without `_bucket`, `_sum` or `_count` for histograms.
    pub family: String,
    pub labels: BTreeMap<String, String>,
}

/// The samples of a Prometheus text page.
pub fn samples(page: &str) -> Vec<Sample> {
    let histograms: BTreeSet<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" histogram"))
        .collect();
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|base| histograms.contains(base))
                })
                .unwrap_or(name)
                .to_owned();
            let labels = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end + 1..])
            } else {
                BTreeMap::new()
            };
            Sample { family, labels }
        })
        .collect()
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let name = name.trim_start_matches(',').trim().to_owned();
        if name.is_empty() || name.starts_with('}') {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label {name} in {text}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(name, value);
        if chars.peek() == Some(&'}') {
            break;
        }
    }
    labels
}

/// Distinct values of every label of every family, `le` aside.
pub fn label_values(pages: &[String]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut values: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for page in pages {
        for s in samples(page) {
            for (label, value) in s.labels {
                if label != "le" {
                    values
                        .entry((s.family.clone(), label))
                        .or_default()
                        .insert(value);
                }
            }
        }
    }
    values
}

/// Whether a label value looks like an id: a UUID, or a long number or hex string.
pub fn looks_like_an_id(value: &str) -> bool {
    let hex = value.replace('-', "");
    let uuid = hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit());
    let long_number = value.len() >= 6 && value.chars().all(|c| c.is_ascii_digit());
    uuid || long_number || Uuid::parse_str(value).is_ok()
}
