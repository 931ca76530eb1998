//! `drover.yaml`: sites, target systems, state store, evidence, API, schedules and the
//! paths of the CMDB and the runbooks.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::node::Located;
use crate::types::{Dur, SecretRef};

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Data centres or regions.
    #[serde(default)]
    pub sites: Vec<Site>,
    /// Kubernetes clusters, reached through a kubeconfig context.
    #[serde(default)]
    pub kubernetes: Vec<KubeCluster>,
    /// S3-compatible object stores.
    #[serde(default)]
    pub object_stores: Vec<ObjectStore>,
    /// Databases (PostgreSQL).
    #[serde(default)]
    pub databases: Vec<Database>,
    /// Where runs and their journals are kept.
    #[serde(default)]
    pub state: StateConfig,
    /// Signing key and archive of the evidence.
    #[serde(default)]
    pub evidence: EvidenceConfig,
    /// The daemon's HTTP API.
    #[serde(default)]
    pub api: Option<ApiConfig>,
    /// Cron schedules run by the daemon.
    #[serde(default)]
    pub schedules: Vec<Schedule>,
    /// Engine settings: parallelism, anti-flap window.
    #[serde(default)]
    pub engine: EngineConfig,
    /// The daemon (`drover serve`): what it does with interrupted runs on start, and how
    /// long it waits for steps in flight on shutdown.
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// High availability: this daemon is one node of a cluster sharing a PostgreSQL
    /// state store; one node leads (runs schedules and runs), the others stand by.
    #[serde(default)]
    pub ha: Option<HaConfig>,
    /// Called on run started, finished, stuck and approval needed (JSON with a
    /// Slack-compatible `text`).
    #[serde(default)]
    pub webhooks: Vec<Webhook>,
    /// External plugins: executables used as `uses: ext.NAME`.
    #[serde(default)]
    pub plugins: Vec<ExternalPlugin>,
    /// The CMDB file, relative to this file.
    #[serde(default = "default_cmdb")]
    pub cmdb: Located<PathBuf>,
    /// The runbooks folder, relative to this file.
    #[serde(default = "default_runbooks")]
    pub runbooks: Located<PathBuf>,
}

impl Config {
    /// Every secret the configuration names (their values must never be recorded).
    pub fn secret_refs(&self) -> Vec<&SecretRef> {
        let mut out: Vec<&SecretRef> = self.databases.iter().map(|d| &d.url).collect();
        for s in &self.object_stores {
            out.extend(s.access_key_id.iter().chain(s.secret_access_key.iter()));
        }
        out.push(&self.evidence.signing_key);
        out.extend(self.state.password.iter());
        out.extend(self.webhooks.iter().map(|w| &w.url));
        out
    }
}

fn default_cmdb() -> Located<PathBuf> {
    Located::new(Default::default(), PathBuf::from("cmdb.yaml"))
}

fn default_runbooks() -> Located<PathBuf> {
    Located::new(Default::default(), PathBuf::from("../runbooks"))
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Site {
    pub name: Located<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubeCluster {
    pub name: Located<String>,
    pub site: Located<String>,
    /// Path of the kubeconfig file (default: `$KUBECONFIG`, else `~/.kube/config`).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[serde(default)]
    pub context: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectStore {
    pub name: Located<String>,
    pub site: Located<String>,
    pub endpoint: Located<String>,
    #[serde(default = "default_region")]
    pub region: String,
    pub bucket: Located<String>,
    #[serde(default)]
    pub path_style: bool,
    #[serde(default)]
    pub access_key_id: Option<SecretRef>,
    #[serde(default)]
    pub secret_access_key: Option<SecretRef>,
}

fn default_region() -> String {
    "us-east-1".into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    Postgres,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Database {
    pub name: Located<String>,
    pub site: Located<String>,
    pub kind: DatabaseKind,
    /// Connection URL: a secret, as it usually holds a password.
    pub url: SecretRef,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `sqlite://PATH` (relative to this file) or `postgres://...`.
    #[serde(default = "default_state_url")]
    pub url: Located<String>,
    /// The PostgreSQL password, as a secret (`{env: NAME}` or `{file: PATH}`), so that
    /// the URL in this file holds none.
    #[serde(default)]
    pub password: Option<SecretRef>,
}

fn default_state_url() -> Located<String> {
    Located::new(Default::default(), "sqlite://.drover/state.db".into())
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            url: default_state_url(),
            password: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvidenceConfig {
    /// The ed25519 signing key; created (mode 0600) on first use.
    #[serde(default = "default_signing_key")]
    pub signing_key: SecretRef,
    #[serde(default)]
    pub archive: Option<EvidenceArchive>,
    /// The keys whose seals an auditor accepts, as drover prints their fingerprints
    /// (`SHA256:` and 64 hex digits). `evidence verify` fails a run or bundle sealed by
    /// any other key. Empty (the default): not pinned, and verification says so.
    #[serde(default)]
    pub trusted_keys: Vec<Located<String>>,
}

/// Checks that `s` is a key fingerprint as drover prints them: `SHA256:` and the 64 hex
/// digits of the SHA-256 of the ed25519 public key.
pub fn check_fingerprint(s: &str) -> Result<(), String> {
    let ok = s
        .strip_prefix("SHA256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a key fingerprint: expected `SHA256:` and 64 hex digits, as `drover evidence verify` prints it"
        ))
    }
}

fn default_signing_key() -> SecretRef {
    SecretRef::File(PathBuf::from(".drover/evidence.key"))
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self {
            signing_key: default_signing_key(),
            archive: None,
            trusted_keys: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvidenceArchive {
    /// The object store (its bucket must have Object Lock enabled).
    pub object_store: Located<String>,
    /// Key prefix; each run's bundle is `PREFIX<run id>.bundle.json`.
    #[serde(default)]
    pub prefix: String,
    /// How long every uploaded bundle is retained (Object Lock retain-until).
    pub retention_days: Located<u32>,
    /// The retention mode: COMPLIANCE (default; nobody can shorten it) or GOVERNANCE.
    #[serde(default)]
    pub mode: ArchiveMode,
}

/// Object Lock retention modes for archived evidence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum ArchiveMode {
    #[default]
    #[serde(rename = "COMPLIANCE", alias = "compliance")]
    Compliance,
    #[serde(rename = "GOVERNANCE", alias = "governance")]
    Governance,
}

impl ArchiveMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveMode::Compliance => "COMPLIANCE",
            ArchiveMode::Governance => "GOVERNANCE",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `HOST:PORT` to listen on.
    pub listen: Located<String>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub tokens: Vec<ApiToken>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Auditor,
    Admin,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    pub name: Located<String>,
    pub role: Role,
    /// Hex SHA-256 of the token string.
    pub sha256: Located<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    Drill,
    Failover,
    Verify,
}

impl RunMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RunMode::Drill => "drill",
            RunMode::Failover => "failover",
            RunMode::Verify => "verify",
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub name: Located<String>,
    /// A runbook name.
    pub runbook: Located<String>,
    /// Six fields, seconds first: `0 0 3 * * Sun`.
    pub cron: Located<String>,
    /// `drill` (default) or `verify`; failovers are never scheduled.
    #[serde(default = "default_schedule_mode")]
    pub mode: Located<RunMode>,
    /// The IANA time zone the expression is read in (`Europe/Berlin`); default UTC.
    #[serde(default)]
    pub timezone: Option<Located<String>>,
}

/// What the daemon does with runs it finds interrupted when it starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnStart {
    /// Resume them (the journal says where they are).
    #[default]
    Resume,
    /// Leave them for an operator (`drover resume` or `drover ack`).
    Hold,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    #[serde(default)]
    pub on_start: OnStart,
    /// On SIGTERM: how long steps in flight may take to reach a journaled point.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Dur,
}

/// `ha:`: this daemon as a node of a cluster.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// This node's name, unique in the cluster (e.g. `drover-east`).
    pub node: Located<String>,
    /// The site it runs in (one of `sites`), shown in `/api/v1/cluster`.
    #[serde(default)]
    pub site: Option<Located<String>>,
    /// How long leadership lasts without a renewal (renewed every third of it); a
    /// standby takes over at most this long (plus one renewal) after the leader is lost.
    #[serde(default = "default_lease")]
    pub lease: Located<Dur>,
}

fn default_lease() -> Located<Dur> {
    Located::new(Default::default(), Dur(std::time::Duration::from_secs(10)))
}

fn default_shutdown_grace() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            on_start: OnStart::Resume,
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

/// What a webhook is told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    RunStarted,
    RunFinished,
    RunStuck,
    ApprovalNeeded,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub name: Located<String>,
    /// The URL to POST to; a secret (`{env: NAME}` or `{file: PATH}`), as webhook URLs
    /// usually carry a token.
    pub url: SecretRef,
    /// Which events; all when left out.
    #[serde(default)]
    pub events: Vec<WebhookEvent>,
}

fn default_schedule_mode() -> Located<RunMode> {
    Located::new(Default::default(), RunMode::Drill)
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Most steps running at once.
    #[serde(default = "default_max_parallel")]
    pub max_parallel: usize,
    /// After a failover, further failovers of that service need `--ack` for this long.
    #[serde(default = "default_anti_flap")]
    pub anti_flap: Dur,
    /// Delay before the first retry of a step; it doubles per attempt, up to 30s.
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff: Dur,
}

fn default_retry_backoff() -> Dur {
    Dur(std::time::Duration::from_secs(1))
}

fn default_max_parallel() -> usize {
    16
}

fn default_anti_flap() -> Dur {
    Dur(std::time::Duration::from_secs(3600))
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_parallel: default_max_parallel(),
            anti_flap: default_anti_flap(),
            retry_backoff: default_retry_backoff(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExternalKind {
    Check,
    Change,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalPlugin {
    /// Used as `uses: ext.NAME`.
    pub name: Located<String>,
    /// argv of the executable (relative paths resolve against this file's folder).
    pub command: Located<Vec<String>>,
    /// `check` (read-only) or `change`.
    pub kind: ExternalKind,
    /// Whether a completed change can be undone (the plugin gets `"op": "compensate"`).
    #[serde(default)]
    pub compensable: bool,
}

#[cfg(test)]
mod tests {
    use super::check_fingerprint;

    #[test]
    fn fingerprints_are_sha256_and_64_hex_digits() {
        let hex = "0123456789abcdef".repeat(4);
        assert!(check_fingerprint(&format!("SHA256:{hex}")).is_ok());
        assert!(check_fingerprint(&format!("SHA256:{}", hex.to_uppercase())).is_ok());
        for bad in [
            hex.clone(),
            format!("sha256:{hex}"),
            format!("SHA256:{}", &hex[1..]),
            format!("SHA256:{hex}0"),
            format!("SHA256:{}g", &hex[1..]),
            format!("SHA256: {hex}"),
            "SHA256:00".to_owned(),
            String::new(),
        ] {
            let e = check_fingerprint(&bad).expect_err(&bad);
            assert!(e.contains("expected `SHA256:` and 64 hex digits"), "{e}");
        }
    }
}
