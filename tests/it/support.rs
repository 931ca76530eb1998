//! Shared test support: a small valid workspace in a temporary folder that tests break
//! one edit at a time, the path of the real `drover` binary (built on demand), an
//! in-process loader with every plugin registered, and insta filters for temp paths.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use assert_cmd::Command;
use drover_model::Workspace;
use drover_plugin_api::Registry;
use tempfile::TempDir;

/// `config/drover.yaml` of the base fixture. Line numbers matter: tests quote them.
pub const CONFIG: &str = r#"sites:
  - {name: east}
  - {name: west}
kubernetes:
  - {name: east-k8s, site: east}
  - {name: west-k8s, site: west}
object_stores:
  - {name: backups-west, site: west, endpoint: "http://127.0.0.1:9000", bucket: backups}
databases:
  - {name: db-east, site: east, kind: postgres, url: {env: DB_EAST_URL}}
  - {name: db-west, site: west, kind: postgres, url: {env: DB_WEST_URL}}
schedules:
  - {name: nightly, runbook: failover, cron: "0 0 3 * * *", mode: drill}
cmdb: cmdb.yaml
runbooks: runbooks
"#;

/// The CMDB of the base fixture: shop -> api -> {db, cache}.
pub const CMDB: &str = r#"tiers:
  gold: {rto: 15m, rpo: 1m}
items:
  - {id: shop, kind: business_service, tier: gold, depends_on: [api]}
  - {id: api, kind: application, depends_on: [db, cache], runs_on: {east: east-k8s, west: west-k8s}}
  - {id: cache, kind: cache}
  - {id: db, kind: database, instances: {east: db-east, west: db-west}}
"#;

/// `runbooks/failover.yaml` of the base fixture.
pub const FAILOVER: &str = r#"name: failover
service: shop
from: east
to: west
preflight:
  - {name: replicating, uses: postgres.replication, with: {primary: db-east, standby: db-west, max_lag: 10s}}
steps:
  - {id: fence, ci: db, uses: postgres.fence, with: {database: db-east}}
  - {id: promote, ci: db, uses: postgres.promote, with: {database: db-west}, needs: [fence]}
  - {id: scale, ci: api, uses: kubernetes.scale, with: {cluster: west-k8s, namespace: shop, kind: Deployment, name: api, replicas: 3}}
verify:
  - {name: healthy, uses: http.check, with: {url: "http://127.0.0.1:8080/healthz"}, within: 1m}
rollback:
  - {id: scale-back, uses: kubernetes.scale, with: {cluster: west-k8s, namespace: shop, kind: Deployment, name: api, replicas: 0}}
"#;

/// `runbooks/backups.yaml` of the base fixture.
pub const BACKUPS: &str = r#"name: backups
service: db
steps:
  - {id: dumps, ci: db, uses: s3.verify-backups, with: {store: backups-west, prefix: db/, max_age: 26h}}
"#;

/// A workspace of YAML files in a temporary folder.
#[derive(Debug)]
pub struct Fixture {
    dir: TempDir,
    /// The folder's path as a regex, for insta filters.
    path_regex: String,
}

impl Fixture {
    /// The base fixture: a config, a CMDB and two runbooks, all valid.
    pub fn new() -> Self {
        let fx = Self::empty();
        fx.write("drover.yaml", CONFIG);
        fx.write("cmdb.yaml", CMDB);
        fx.write("runbooks/failover.yaml", FAILOVER);
        fx.write("runbooks/backups.yaml", BACKUPS);
        fx
    }

    /// An empty folder.
    pub fn empty() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("drover-it-")
            .tempdir()
            .expect("create a temporary folder");
        let path_regex = regex_escape(&dir.path().display().to_string());
        Self { dir, path_regex }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn config(&self) -> PathBuf {
        self.path("drover.yaml")
    }

    pub fn write(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create folder");
        }
        std::fs::write(&path, text).expect("write fixture file");
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).expect("read fixture file")
    }

    /// Replaces the one occurrence of `from` in a file (panics unless there is exactly
    /// one, so that a fixture edit cannot silently miss).
    #[track_caller]
    pub fn replace(&self, rel: &str, from: &str, to: &str) {
        let text = self.read(rel);
        let n = text.matches(from).count();
        assert_eq!(n, 1, "`{from}` occurs {n} times in {rel}, expected once");
        self.write(rel, &text.replacen(from, to, 1));
    }

    pub fn remove(&self, rel: &str) {
        std::fs::remove_file(self.path(rel)).expect("remove fixture file");
    }

    /// The `drover` binary with `--config` pointing at this fixture, run from its folder.
    pub fn drover(&self) -> Command {
        let mut cmd = drover();
        cmd.current_dir(self.root()).arg("--config").arg(self.config());
        cmd
    }

    /// insta filters replacing this fixture's folder with `[TMP]`.
    pub fn filters(&self) -> Vec<(&str, &str)> {
        vec![(self.path_regex.as_str(), "[TMP]")]
    }

    /// Loads and validates in-process with every built-in plugin.
    pub fn load(&self) -> Workspace {
        load_workspace(&self.config())
    }
}

/// Loads and validates the workspace of `config` in-process, with the registry the
/// binary builds: every built-in plugin plus the config's external plugins.
pub fn load_workspace(config: &Path) -> Workspace {
    let mut ws = Workspace::load(config, &[]);
    let reg = registry(ws.config.as_ref());
    ws.validate(&reg);
    ws
}

/// Every built-in action, plus `ext.NAME` for the config's external plugins: the
/// binary's own registry.
pub fn registry(config: Option<&drover_model::Config>) -> Registry {
    drover::registry::build(config)
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~ ".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The repository root (this package lives in `tests/`).
pub fn repo_root() -> PathBuf {
    drover_model::paths::normalize(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

/// A `drover` command with a clean environment (no `DROVER_CONFIG`, no `RUST_LOG`).
pub fn drover() -> Command {
    let mut cmd = Command::new(drover_bin());
    cmd.env_remove("DROVER_CONFIG")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1");
    cmd
}

/// The path of the `drover` binary, built from the current sources.
///
/// The binary belongs to another package, so Cargo gives this test no
/// `CARGO_BIN_EXE_drover`. The first use in a test run runs
/// `cargo build -p drover --bin drover` with this test binary's profile (a no-op when
/// it is fresh, which it is after `cargo nextest run --workspace`) and takes the path
/// Cargo reports, so a stale binary is never tested. Set `DROVER_BIN` to test a binary
/// built elsewhere instead.
pub fn drover_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("DROVER_BIN") {
        Some(p) => PathBuf::from(p),
        None => built_once_per_run(),
    })
}

/// nextest runs every test in a process of its own: the first to build the binary
/// leaves its path in a file named after the run, so that the others skip Cargo.
fn built_once_per_run() -> PathBuf {
    let Some(run) = std::env::var_os("NEXTEST_RUN_ID") else {
        return build_drover();
    };
    let marker = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("drover-bin-{}", run.to_string_lossy()));
    if let Ok(path) = std::fs::read_to_string(&marker) {
        return PathBuf::from(path);
    }
    let bin = build_drover();
    let tmp = marker.with_extension(std::process::id().to_string());
    if std::fs::write(&tmp, bin.display().to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, &marker);
    }
    bin
}

fn build_drover() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    // <target>/<profile>/deps/it-HASH
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = std::process::Command::new(cargo);
    // What Cargo sets for this test process describes this package; passed on, it
    // would look like a changed environment to build scripts that watch it (ring's
    // does) and make every run rebuild the binary.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                &*key,
                "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            )
        {
            cmd.env_remove(&*key);
        }
    }
    cmd.args([
        "build",
        "--quiet",
        "--package",
        "drover",
        "--bin",
        "drover",
        "--message-format=json-render-diagnostics",
        "--manifest-path",
    ])
    .arg(repo_root().join("Cargo.toml"));
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd.output().expect("run cargo build -p drover");
    assert!(
        out.status.success(),
        "`cargo build -p drover` failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "drover")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no `drover` executable")
}

/// Runs `drover validate` on the fixture and returns stderr, checking that it failed
/// with exit code 2 and printed nothing on stdout.
#[track_caller]
pub fn validate_fails(fx: &Fixture) -> String {
    let out = fx.drover().arg("validate").output().expect("run drover");
    let stderr = String::from_utf8(out.stderr).expect("utf-8 stderr");
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// The `PATH:LINE:COL: error: MESSAGE` lines of rendered diagnostics (no snippets).
pub fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(": error: ")).collect()
}

/// SplitMix64: a small seeded generator, so that a randomized campaign can be replayed
/// from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The seed of a randomized campaign: `VAR` when set, else the clock's nanoseconds.
pub fn seed(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}
