//! The files of the demo estate, written into the lab's folder: the config (where the
//! lab's servers are; secrets in files next to it), the CMDB and the drill runbook.

/// Where the lab's servers are, for the config.
#[derive(Debug)]
pub struct Endpoints {
    pub s3_east: String,
    pub s3_west: String,
    pub app: String,
    /// The daemon's loopback address (`drover demo --serve`).
    pub api_listen: String,
    /// SHA-256 (hex) of the daemon's login token.
    pub token_sha256: String,
}

pub fn config(e: &Endpoints) -> String {
    format!(
        r#"# The demo estate: two sites on this machine (drover demo writes this file).
sites:
  - {{name: east, description: "Frankfurt (lab)"}}
  - {{name: west, description: "Dublin (lab)"}}
kubernetes:
  - {{name: east-k8s, site: east, kubeconfig: kubeconfig, context: east}}
  - {{name: west-k8s, site: west, kubeconfig: kubeconfig, context: west}}
object_stores:
  - {{name: backups-east, site: east, endpoint: "{s3e}", bucket: backups, path_style: true,
     access_key_id: {{file: secrets/s3-east-key}}, secret_access_key: {{file: secrets/s3-east-secret}}}}
  - {{name: backups-west, site: west, endpoint: "{s3w}", bucket: backups, path_style: true,
     access_key_id: {{file: secrets/s3-west-key}}, secret_access_key: {{file: secrets/s3-west-secret}}}}
databases:
  - {{name: payments-db-east, site: east, kind: postgres, url: {{file: secrets/payments-db-east}}}}
  - {{name: payments-db-west, site: west, kind: postgres, url: {{file: secrets/payments-db-west}}}}
  - {{name: restore-scratch-west, site: west, kind: postgres, url: {{file: secrets/restore-scratch-west}}}}
state: {{url: "sqlite://state.db"}}
evidence: {{signing_key: {{file: evidence.key}}}}
api:
  listen: "{listen}"
  tokens:
    - {{name: demo, role: admin, sha256: "{token}"}}
engine: {{max_parallel: 8}}
cmdb: cmdb.yaml
runbooks: runbooks
# The application's own health endpoint, per site: {app}/east/healthz, {app}/west/healthz
"#,
        s3e = e.s3_east,
        s3w = e.s3_west,
        listen = e.api_listen,
        token = e.token_sha256,
        app = e.app,
    )
}

pub const CMDB: &str = r#"# The demo estate's CMDB: payments and what it runs on.
tiers:
  gold: {rto: 15m, rpo: 1m, drill_every: 90d}
  silver: {rto: 4h, rpo: 26h, drill_every: 180d}
items:
  - {id: payments, kind: business_service, tier: gold, owner: payments-team,
     description: Card payments for the web shop., depends_on: [payments-web]}
  - {id: payments-web, kind: application, owner: payments-team, depends_on: [payments-api],
     runs_on: {east: east-k8s, west: west-k8s}}
  - {id: payments-api, kind: application, owner: payments-team, depends_on: [payments-db, payments-queue],
     runs_on: {east: east-k8s, west: west-k8s}}
  - {id: payments-queue, kind: queue, owner: platform-team, runs_on: {east: east-k8s, west: west-k8s}}
  - {id: payments-db, kind: database, owner: dba-team, depends_on: [backups],
     instances: {east: payments-db-east, west: payments-db-west}}
  - {id: backups, kind: technical_service, tier: silver, owner: storage-team,
     instances: {east: backups-east, west: backups-west}}
"#;

/// The drill: preflight gates, the database failover with a heartbeat, the workloads
/// in CMDB order, HTTP and SQL verification, and the cleanup.
pub fn runbook(app: &str, dump_key: &str) -> String {
    format!(
        r#"name: payments-demo
description: Fail payments over from east to west in the lab, prove west serves, clean up.
service: payments
from: east
to: west
targets: {{rto: 2m, rpo: 1m}}

preflight:
  - {{name: east serves payments, ci: payments, uses: http.check, with: {{url: "{app}/east/healthz", body_contains: ok}}}}
  - {{name: standby replicating, ci: payments-db, uses: postgres.replication,
     with: {{primary: payments-db-east, standby: payments-db-west, max_lag: 10s, max_lag_bytes: 16777216}}}}
  - {{name: backups verified, ci: backups, uses: s3.verify-backups,
     with: {{store: backups-west, prefix: payments/, max_age: 26h, checksum: sha256}}}}
  - {{name: backups replicated, ci: backups, uses: s3.replication,
     with: {{source: backups-east, target: backups-west, prefix: payments/, max_lag: 1h}}}}
  - {{name: newest dump restores, ci: payments-db, uses: postgres.restore-test,
     with: {{store: backups-west, key: "{dump_key}", database: restore-scratch-west,
            query: "SELECT count(*) FROM payments", expect: "1000"}}}}

steps:
  - {{id: heartbeat-east, ci: payments-db, uses: postgres.heartbeat, with: {{database: payments-db-east, interval: 200ms}}, estimate: 1s}}
  - {{id: fence-east, ci: payments-db, uses: postgres.fence, with: {{database: payments-db-east}}, needs: [heartbeat-east], timeout: 1m, estimate: 2s}}
  - {{id: promote-west, ci: payments-db, uses: postgres.promote, with: {{database: payments-db-west}}, needs: [fence-east], timeout: 1m, estimate: 3s}}
  - {{id: start-queue-west, ci: payments-queue, uses: kubernetes.scale,
     with: {{cluster: west-k8s, namespace: payments, kind: StatefulSet, name: queue, replicas: 1, wait: ready}}, timeout: 1m, retries: 2, estimate: 2s}}
  - {{id: start-api-west, ci: payments-api, uses: kubernetes.scale,
     with: {{cluster: west-k8s, namespace: payments, kind: Deployment, name: api, replicas: 3, wait: ready}}, timeout: 1m, retries: 2, estimate: 2s}}
  - {{id: start-web-west, ci: payments-web, uses: kubernetes.scale,
     with: {{cluster: west-k8s, namespace: payments, kind: Deployment, name: web, replicas: 2, wait: ready}}, timeout: 1m, retries: 2, estimate: 2s}}

verify:
  - {{name: west serves payments, ci: payments, uses: http.check, with: {{url: "{app}/west/healthz", body_contains: ok, max_latency: 500ms}}, within: 1m}}
  - {{name: west database writable, ci: payments-db, uses: postgres.writable, with: {{database: payments-db-west}}, within: 1m}}
  - {{name: west web rolled out, ci: payments-web, uses: kubernetes.wait, with: {{cluster: west-k8s, namespace: payments, kind: Deployment, name: web}}, within: 1m}}

# The drill's cleanup: west's workloads back to zero, as the lab had them.
rollback:
  - {{id: stop-web-west, uses: kubernetes.scale, with: {{cluster: west-k8s, namespace: payments, kind: Deployment, name: web, replicas: 0}}}}
  - {{id: stop-api-west, uses: kubernetes.scale, with: {{cluster: west-k8s, namespace: payments, kind: Deployment, name: api, replicas: 0}}, needs: [stop-web-west]}}
  - {{id: stop-queue-west, uses: kubernetes.scale, with: {{cluster: west-k8s, namespace: payments, kind: StatefulSet, name: queue, replicas: 0}}, needs: [stop-api-west]}}
  - {{id: west-idle-again, uses: http.check, with: {{url: "{app}/west/healthz", status: 503}}, needs: [stop-queue-west], within: 30s}}
"#
    )
}
