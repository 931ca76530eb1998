//! The S3 actions against real servers started by the lab ([`S3Server`]): s3s-fs
//! (checks SigV4 and uploaded checksums; objects are files, so a test rots one on disk
//! and dates one back by its mtime) and moto (multipart composite checksums, Object
//! Lock). Driven through the real `drover` binary; objects are put with aws-sdk-s3.
//! A missing server fails the test with how to install it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, DefaultRetention, ObjectLockConfiguration,
    ObjectLockEnabled, ObjectLockRetentionMode, ObjectLockRule,
};
use drover_lab::{Node, PgPair, S3Kind, S3Server};
use serde_json::Value;

use crate::support::Fixture;

const BUCKET: &str = "backups";

struct Lab {
    server: S3Server,
    fx: Fixture,
    rt: tokio::runtime::Runtime,
    client: Client,
    /// The secret key drover is given (the server's, unless a test breaks it).
    secret: String,
}

fn config(endpoint: &str) -> String {
    format!(
        r#"sites: [{{name: west}}]
state: {{url: "sqlite://state/state.db"}}
engine: {{retry_backoff: 50ms}}
object_stores:
  - {{name: store, site: west, endpoint: "{endpoint}", bucket: {BUCKET}, path_style: true,
     access_key_id: {{env: DROVER_IT_S3_KEY}}, secret_access_key: {{env: DROVER_IT_S3_SECRET}}}}
  - {{name: replica, site: west, endpoint: "{endpoint}", bucket: replica, path_style: true,
     access_key_id: {{env: DROVER_IT_S3_KEY}}, secret_access_key: {{env: DROVER_IT_S3_SECRET}}}}
cmdb: cmdb.yaml
runbooks: runbooks
"#
    )
}

const CMDB: &str = "tiers: {silver: {rto: 4h, rpo: 26h}}
items:
  - {id: svc, kind: business_service, tier: silver, depends_on: [b]}
  - {id: b, kind: bucket}
";

impl Lab {
    fn new(kind: S3Kind) -> Lab {
        let server = S3Server::start(kind).unwrap_or_else(|e| panic!("{e}"));
        let fx = Fixture::empty();
        fx.write("drover.yaml", &config(&server.endpoint()));
        fx.write("cmdb.yaml", CMDB);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(server.endpoint())
            .force_path_style(true)
            .http_client(http)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                server.access_key(),
                server.secret_key(),
                None,
                None,
                "lab",
            ))
            .build();
        let secret = server.secret_key().to_owned();
        let lab = Lab {
            client: Client::from_conf(conf),
            server,
            fx,
            rt,
            secret,
        };
        lab.bucket(BUCKET, false);
        lab
    }

    fn bucket(&self, name: &str, lock: bool) {
        self.rt
            .block_on(
                self.client
                    .create_bucket()
                    .bucket(name)
                    .object_lock_enabled_for_bucket(lock)
                    .send(),
            )
            .unwrap_or_else(|e| panic!("create bucket {name}: {e:?}"));
    }

    /// Puts an object; with `sha256` the server stores its SHA-256 checksum.
    fn put_in(&self, bucket: &str, key: &str, body: &[u8], sha256: bool) {
        let mut req = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body.to_vec()));
        if sha256 {
            req = req.checksum_algorithm(ChecksumAlgorithm::Sha256);
        }
        self.rt
            .block_on(req.send())
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
    }

    fn put(&self, key: &str, body: &[u8], sha256: bool) {
        self.put_in(BUCKET, key, body, sha256);
    }

    /// Puts `KEY.sha256` in sha256sum format for `body`.
    fn sidecar(&self, key: &str, body: &[u8]) {
        let name = key.rsplit('/').next().unwrap();
        self.put(
            &format!("{key}.sha256"),
            format!("{}  {name}\n", sha256_hex(body)).as_bytes(),
            false,
        );
    }

    fn multipart(&self, key: &str, parts: &[Vec<u8>]) {
        self.rt.block_on(async {
            let up = self
                .client
                .create_multipart_upload()
                .bucket(BUCKET)
                .key(key)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .send()
                .await
                .unwrap();
            let id = up.upload_id().unwrap();
            let mut done = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                let n = i as i32 + 1;
                let r = self
                    .client
                    .upload_part()
                    .bucket(BUCKET)
                    .key(key)
                    .upload_id(id)
                    .part_number(n)
                    .checksum_algorithm(ChecksumAlgorithm::Sha256)
                    .body(ByteStream::from(p.clone()))
                    .send()
                    .await
                    .unwrap();
                let mut part = CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag(r.e_tag().map(Into::into));
                if let Some(c) = r.checksum_sha256() {
                    part = part.checksum_sha256(c);
                }
                done.push(part.build());
            }
            // moto answers with a root element the SDK does not parse
            // (`CompleteMultipartUploadResponse`): the upload is done all the same,
            // which the HEAD below shows.
            let _ = self
                .client
                .complete_multipart_upload()
                .bucket(BUCKET)
                .key(key)
                .upload_id(id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
                .send()
                .await;
            let head = self.client.head_object().bucket(BUCKET).key(key).send().await.unwrap();
            assert!(
                head.e_tag().unwrap().ends_with(&format!("-{}\"", parts.len())),
                "{head:?}"
            );
        });
    }

    /// Dates an object back (s3s-fs: `LastModified` is the file's mtime).
    fn age(&self, bucket: &str, key: &str, by: Duration) -> f64 {
        let t = SystemTime::now() - by;
        let t = UNIX_EPOCH + Duration::from_secs(t.duration_since(UNIX_EPOCH).unwrap().as_secs());
        let f = std::fs::File::options()
            .write(true)
            .open(self.server.object_path(bucket, key))
            .unwrap();
        f.set_modified(t).unwrap();
        t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
    }

    /// Flips one byte of an object on disk (s3s-fs): bit rot under the server.
    fn rot(&self, key: &str) {
        let path = self.server.object_path(BUCKET, key);
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let i = bytes.len() / 2;
        bytes[i] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }

    /// Adds the database `scratch` (URL from `$DROVER_IT_PG_URL`) to the config.
    fn with_database(&self) {
        let mut c = config(&self.server.endpoint());
        c.push_str("databases:\n  - {name: scratch, site: west, kind: postgres, url: {env: DROVER_IT_PG_URL}}\n");
        self.fx.write("drover.yaml", &c);
    }

    fn runbook(&self, name: &str, checks: &str) {
        self.fx.write(
            &format!("runbooks/{name}.yaml"),
            &format!("name: {name}\nservice: svc\nverify:\n{checks}"),
        );
    }

    /// `drover verify NAME --format json`: exit code, the run's JSON, stderr, seconds.
    fn verify(&self, name: &str, env: &[(&str, &str)]) -> (i32, Value, String) {
        let mut cmd = self.fx.drover();
        cmd.args(["verify", name, "--format", "json"])
            .env("DROVER_IT_S3_KEY", self.server.access_key())
            .env("DROVER_IT_S3_SECRET", &self.secret);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run drover");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let code = out.status.code().unwrap_or(-1);
        let json = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("no JSON ({e}), exit {code}\nstdout: {stdout}\nstderr: {stderr}"));
        (code, json, stderr)
    }

    /// The data a check recorded, from the run's exported evidence bundle.
    fn data(&self, run: &Value, key: &str) -> Value {
        let id = run["id"].as_str().unwrap();
        let file = self.fx.path(&format!("{id}.bundle.json"));
        let out = self
            .fx
            .drover()
            .args(["evidence", "export", id, "-o"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let bundle: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        find(&bundle, key).unwrap_or_else(|| panic!("no `{key}` in the bundle"))
    }
}

/// The first value of `key` anywhere in `v` (records may hold their JSON as a string).
fn find(v: &Value, key: &str) -> Option<Value> {
    match v {
        Value::Object(m) => m.get(key).cloned().or_else(|| m.values().find_map(|v| find(v, key))),
        Value::Array(a) => a.iter().find_map(|v| find(v, key)),
        Value::String(s) if s.starts_with('{') => serde_json::from_str::<Value>(s).ok().and_then(|v| find(&v, key)),
        _ => None,
    }
}

/// SHA-256 in hex, by coreutils' `sha256sum` (an independent implementation).
fn sha256_hex(b: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(b)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn check<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {run:#}"))
}

fn error(run: &Value, name: &str) -> String {
    check(run, name)["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {run:#}"))
        .to_owned()
}

fn statuses(objects: &Value) -> Vec<(String, String)> {
    objects
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["key"].as_str().unwrap().to_owned(),
                o["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

const VERIFY: &str =
    "  - {name: backups, uses: s3.verify-backups, with: {store: store, prefix: db/, max_age: 26h, checksum: sha256}}\n";

#[test]
fn s3_verify_backups_intact_rotted_stale_unverifiable_and_too_small_on_s3s_fs() {
    let lab = Lab::new(S3Kind::S3sFs);
    let a = vec![b'a'; 300_000];
    let b = b"second backup".repeat(1000);
    lab.put("db/a.dump", &a, true); // stored SHA-256 checksum
    lab.put("db/b.dump", &b, false);
    lab.sidecar("db/b.dump", &b);
    lab.age(BUCKET, "db/a.dump", Duration::from_secs(7200));
    let b_time = lab.age(BUCKET, "db/b.dump", Duration::from_secs(3600));
    lab.runbook("backups", VERIFY);

    // Fresh and intact: each verified by what it has; RPO from the newest, to the second.
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let (code, run, stderr) = lab.verify("backups", &[]);
    let ended = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    assert_eq!(code, 0, "{run:#}\n{stderr}");
    let data = lab.data(&run, "objects");
    let by: Vec<_> = data
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["key"].clone(), o["verified_by"].clone()))
        .collect();
    assert_eq!(
        by,
        [
            (Value::from("db/a.dump"), Value::from("stored_checksum")),
            (Value::from("db/b.dump"), Value::from("sidecar"))
        ]
    );
    let rpo = run["rpo"]["achieved_s"].as_f64().expect("an RPO");
    assert!(
        rpo >= (started - b_time).floor() && rpo <= (ended - b_time).ceil(),
        "rpo {rpo}"
    );

    // Rot under the server: named, the run fails.
    lab.rot("db/b.dump");
    let (code, run, _) = lab.verify("backups", &[]);
    assert_eq!(code, 1, "{run:#}");
    let e = error(&run, "backups");
    assert!(e.contains("corrupt: `db/b.dump`") && !e.contains("db/a.dump"), "{e}");
    lab.put("db/b.dump", &b, false);
    lab.age(BUCKET, "db/b.dump", Duration::from_secs(3600));
    // Rot of an object with a stored checksum: s3s-fs keeps the checksum it was
    // uploaded with, drover recomputes from the bytes.
    lab.rot("db/a.dump");
    let (code, run, _) = lab.verify("backups", &[]);
    assert_eq!(code, 1, "{run:#}");
    let e = error(&run, "backups");
    assert!(e.contains("corrupt: `db/a.dump`") && !e.contains("b.dump"), "{e}");
    lab.put("db/a.dump", &a, true);
    lab.age(BUCKET, "db/a.dump", Duration::from_secs(7200));

    // Stale: the newest passing backup is older than max_age.
    lab.runbook(
        "tight",
        &VERIFY
            .replace("max_age: 26h", "max_age: 30m")
            .replace("name: backups,", "name: tight,"),
    );
    let (code, run, _) = lab.verify("tight", &[]);
    assert_eq!(code, 1, "{run:#}");
    let e = error(&run, "tight");
    assert!(e.contains("stale: `db/b.dump`") && e.contains("max_age 30m"), "{e}");

    // Unverifiable: reported as such, never as verified; alone it fails the check.
    lab.put("db/c.dump", b"no checksum anywhere", false);
    let (code, run, _) = lab.verify("backups", &[]);
    assert_eq!(code, 0, "{run:#}");
    assert!(
        check(&run, "backups")["summary"]
            .as_str()
            .unwrap()
            .contains("1 unverifiable: `db/c.dump`"),
        "{run:#}"
    );
    let objs = lab.data(&run, "objects");
    assert!(statuses(&objs).contains(&("db/c.dump".into(), "unverifiable".into())));
    lab.runbook(
        "only-c",
        "  - {name: c, uses: s3.verify-backups, with: {store: store, prefix: db/c, max_age: 26h, checksum: sha256}}\n",
    );
    let (code, run, _) = lab.verify("only-c", &[]);
    assert_eq!(code, 1, "{run:#}");
    assert!(error(&run, "c").contains("no backup could be verified"), "{run:#}");

    // Too small.
    lab.runbook(
        "big",
        &VERIFY
            .replace("checksum: sha256", "min_size: 100000")
            .replace("name: backups,", "name: big,"),
    );
    let (code, run, _) = lab.verify("big", &[]);
    assert_eq!(code, 1, "{run:#}");
    let e = error(&run, "big");
    assert!(
        e.contains("too small") && e.contains("`db/b.dump`") && e.contains("`db/c.dump`") && !e.contains("a.dump"),
        "{e}"
    );
}

#[test]
fn s3_multipart_composite_checksum_and_manifest_on_moto() {
    let lab = Lab::new(S3Kind::Moto);
    let parts = vec![vec![b'x'; 5 << 20], vec![b'y'; 1 << 20]];
    lab.multipart("db/big.dump", &parts);
    let m = b"manifest-listed backup".to_vec();
    lab.put("db/m.dump", &m, false);
    lab.put(
        "db/MANIFEST",
        format!("{}  m.dump\n{}  db/gone.dump\n", sha256_hex(&m), sha256_hex(b"gone")).as_bytes(),
        false,
    );
    lab.runbook(
        "backups",
        "  - {name: backups, uses: s3.verify-backups, with: {store: store, prefix: db/, max_age: 1h, checksum: sha256, manifest: db/MANIFEST}}\n",
    );
    let (code, run, _) = lab.verify("backups", &[]);
    // The manifest names a backup that is not there: missing fails the check.
    assert_eq!(code, 1, "{run:#}");
    assert!(error(&run, "backups").contains("missing: `db/gone.dump`"), "{run:#}");
    lab.put("db/MANIFEST", format!("{}  m.dump\n", sha256_hex(&m)).as_bytes(), false);
    let (code, run, stderr) = lab.verify("backups", &[]);
    assert_eq!(code, 0, "{run:#}\n{stderr}");
    let objs = lab.data(&run, "objects");
    let by: Vec<_> = objs
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["key"].as_str().unwrap().to_owned(),
                o["verified_by"].as_str().unwrap_or("").to_owned(),
                o["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        by.contains(&("db/big.dump".into(), "stored_composite_checksum".into(), "ok".into())),
        "{by:?}"
    );
    assert!(
        by.contains(&("db/m.dump".into(), "manifest".into(), "ok".into())),
        "{by:?}"
    );
    assert!(!by.iter().any(|b| b.0 == "db/MANIFEST"), "the manifest is not a backup");
}

#[test]
fn s3_ten_thousand_objects_are_listed_page_by_page_on_s3s_fs() {
    let lab = Lab::new(S3Kind::S3sFs);
    // Written straight into the server's folder: s3s-fs serves its files as objects.
    let dir = lab.server.object_path(BUCKET, "many");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..10_000 {
        std::fs::write(dir.join(format!("{i:05}.dump")), format!("backup {i}")).unwrap();
    }
    lab.runbook(
        "many",
        "  - {name: many, uses: s3.verify-backups, with: {store: store, prefix: many/, max_age: 1h, min_size: 8}}\n",
    );
    let (code, run, stderr) = lab.verify("many", &[]);
    assert_eq!(code, 0, "{run:#}\n{stderr}");
    assert_eq!(lab.data(&run, "backups"), 10_000);
    let objs = lab.data(&run, "objects");
    let last = objs.as_array().unwrap().last().unwrap();
    assert_eq!(last["key"], "many/09999.dump");
}

#[test]
fn s3_replication_names_missing_and_changed_objects_on_s3s_fs() {
    let lab = Lab::new(S3Kind::S3sFs);
    lab.bucket("replica", false);
    for k in ["db/a", "db/b", "db/c"] {
        lab.put(k, format!("v1 {k}").as_bytes(), false);
    }
    lab.put_in("replica", "db/a", b"v1 db/a", false);
    lab.put_in("replica", "db/b", b"v0 db/b", false);
    lab.age("replica", "db/b", Duration::from_secs(60));
    lab.runbook(
        "repl",
        "  - {name: repl, uses: s3.replication, with: {source: store, target: replica, prefix: db/}}\n",
    );
    let (code, run, _) = lab.verify("repl", &[]);
    assert_eq!(code, 1, "{run:#}");
    let e = error(&run, "repl");
    assert!(
        e.contains("missing in the target: `db/c`")
            && e.contains("stale in the target: `db/b`")
            && !e.contains("`db/a`"),
        "{e}"
    );
    // Within max_lag: pending replication passes; an hour-old missing object does not.
    lab.runbook(
        "lag",
        "  - {name: lag, uses: s3.replication, with: {source: store, target: replica, prefix: db/, max_lag: 30m}}\n",
    );
    let (code, run, _) = lab.verify("lag", &[]);
    assert_eq!(code, 0, "{run:#}");
    lab.age(BUCKET, "db/c", Duration::from_secs(3600));
    let (code, run, _) = lab.verify("lag", &[]);
    assert_eq!(code, 1, "{run:#}");
    assert!(error(&run, "lag").contains("over max_lag 30m"), "{run:#}");
    // A target copy newer than the source and different: not a delay, a mismatch.
    lab.put_in("replica", "db/a", b"v2 db/a", false);
    lab.put_in("replica", "db/b", b"v1 db/b", false);
    lab.put_in("replica", "db/c", b"v1 db/c", false);
    let (code, run, _) = lab.verify("lag", &[]);
    assert_eq!(code, 1, "{run:#}");
    assert!(
        error(&run, "lag").contains("differ in the target (not older than the source): `db/a`"),
        "{run:#}"
    );
    lab.put_in("replica", "db/a", b"v1 db/a", false);
    let (code, run, _) = lab.verify("lag", &[]);
    assert_eq!(code, 0, "{run:#}");
}

#[test]
fn s3_object_lock_present_and_absent_on_moto() {
    let lab = Lab::new(S3Kind::Moto);
    lab.bucket("replica", true);
    let conf = ObjectLockConfiguration::builder()
        .object_lock_enabled(ObjectLockEnabled::Enabled)
        .rule(
            ObjectLockRule::builder()
                .default_retention(
                    DefaultRetention::builder()
                        .mode(ObjectLockRetentionMode::Governance)
                        .days(30)
                        .build(),
                )
                .build(),
        )
        .build();
    lab.rt
        .block_on(
            lab.client
                .put_object_lock_configuration()
                .bucket("replica")
                .object_lock_configuration(conf)
                .send(),
        )
        .unwrap();
    lab.runbook(
        "lock",
        "  - {name: locked, uses: s3.object-lock, with: {store: replica, mode: GOVERNANCE, min_retention_days: 7}}
  - {name: compliance, uses: s3.object-lock, with: {store: replica, mode: COMPLIANCE}}
  - {name: longer, uses: s3.object-lock, with: {store: replica, min_retention_days: 90}}
  - {name: unlocked, uses: s3.object-lock, with: {store: store}}
",
    );
    let (code, run, _) = lab.verify("lock", &[]);
    assert_eq!(code, 1, "{run:#}");
    assert_eq!(check(&run, "locked")["passed"], true, "{run:#}");
    assert!(
        error(&run, "compliance").contains("GOVERNANCE, not at least COMPLIANCE"),
        "{run:#}"
    );
    assert!(error(&run, "longer").contains("30 days, less than 90"), "{run:#}");
    assert!(
        error(&run, "unlocked").contains("Object Lock is not enabled"),
        "{run:#}"
    );
}

#[test]
fn s3_a_server_down_and_a_wrong_secret_fail_clearly_and_no_key_leaks() {
    let mut lab = Lab::new(S3Kind::S3sFs);
    let data = b"backup".repeat(100);
    lab.put("db/a.dump", &data, true);
    lab.runbook("backups", VERIFY);
    let key = lab.server.access_key().to_owned();
    let secret = lab.server.secret_key().to_owned();
    let mut everything = String::new();

    let (code, run, stderr) = lab.verify("backups", &[("RUST_LOG", "trace")]);
    assert_eq!(code, 0, "{run:#}\n{stderr}");
    everything += &format!("{run}{stderr}");

    // A wrong secret key: s3s-fs checks the signature and answers 403.
    lab.secret = "wrongsecret0123456789".into();
    let (code, run, stderr) = lab.verify("backups", &[("RUST_LOG", "trace")]);
    assert_eq!(code, 1, "{run:#}");
    let e = error(&run, "backups");
    assert!(
        e.contains("access denied (HTTP 403") && e.contains("object store `store`"),
        "{e}"
    );
    assert!(
        !format!("{run}{stderr}").contains("wrongsecret0123456789"),
        "the wrong secret leaked"
    );
    everything += &format!("{run}{stderr}");
    lab.secret = secret.clone();

    // The server down: connection refused, a clear message, fast.
    lab.server.kill();
    let started = Instant::now();
    let (code, run, stderr) = lab.verify("backups", &[("RUST_LOG", "trace")]);
    assert_eq!(code, 1, "{run:#}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    let e = error(&run, "backups");
    assert!(
        e.contains("cannot connect to http://127.0.0.1:") && e.contains("object store `store`"),
        "{e}"
    );
    everything += &format!("{run}{stderr}");

    let out = lab
        .fx
        .drover()
        .args(["runs", "list", "--format", "json"])
        .output()
        .unwrap();
    everything += &String::from_utf8_lossy(&out.stdout);
    let id = run["id"].as_str().unwrap();
    let out = lab.fx.drover().args(["report", id, "--format", "md"]).output().unwrap();
    everything += &String::from_utf8_lossy(&out.stdout);
    everything += &String::from_utf8_lossy(&out.stderr);
    assert!(everything.contains("object store `store`"));
    assert!(!everything.contains(&secret), "the secret key leaked:\n{everything}");
    // The access key id is not in drover's own output (the SDK's trace logs print it
    // in its credentials' Debug, with the secret redacted: see docs/S3.md).
    let ours: String = everything
        .lines()
        .filter(|l| !l.contains("access_key_id: \""))
        .collect();
    assert!(!ours.contains(&key), "the access key id leaked:\n{ours}");
    let mut stored = Vec::new();
    for f in std::fs::read_dir(lab.fx.path("state")).unwrap().flatten() {
        stored.extend(std::fs::read(f.path()).unwrap_or_default());
    }
    for k in [&secret, &key] {
        assert!(
            !stored.windows(k.len()).any(|w| w == k.as_bytes()),
            "a key is in the state store"
        );
    }
}

/// A real `pg_dump -Fc` of the server's `postgres` database, holding `orders` (1,000 rows).
fn pg_dump(pg: &PgPair) -> Vec<u8> {
    pg.sql(
        Node::Primary,
        "CREATE TABLE orders AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 1000) g",
    )
    .unwrap();
    let out = std::process::Command::new(pg.bin().tool("pg_dump"))
        .args(["-Fc", "-h", "127.0.0.1", "-p"])
        .arg(pg.port(Node::Primary).to_string())
        .args(["-U", pg.user(), "-d", "postgres"])
        .env("PGPASSWORD", pg.password())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.starts_with(b"PGDMP"), "not a custom-format dump");
    out.stdout
}

fn scratch_databases(pg: &PgPair) -> String {
    pg.sql(
        Node::Primary,
        "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE 'drover_restore_%'",
    )
    .unwrap()
}

#[test]
fn s3_postgres_restore_test_streams_a_real_pg_dump_into_a_scratch_database_and_drops_it() {
    let pg = PgPair::start_single().expect("start PostgreSQL");
    let lab = Lab::new(S3Kind::S3sFs);
    lab.with_database();
    let dump = pg_dump(&pg);
    lab.put("db/shop.dump", &dump, true);
    let made = lab.age(BUCKET, "db/shop.dump", Duration::from_secs(5400));
    lab.put("db/garbage.dump", b"PGDMP this is not a dump at all", false);
    let url = pg.primary_url();
    let env = [("DROVER_IT_PG_URL", url.as_str()), ("RUST_LOG", "debug")];
    let check = |name: &str, key: &str, expect: &str| {
        format!(
            "  - {{name: {name}, uses: postgres.restore-test, with: {{store: store, key: {key}, database: scratch, \
             query: \"SELECT count(*) FROM orders\", expect: \"{expect}\"}}}}\n"
        )
    };
    let mut everything = String::new();

    // Restored, queried, dropped; the bytes restored are exactly the backup's.
    lab.runbook("restore", &check("restore", "db/shop.dump", "1000"));
    let (code, run, stderr) = lab.verify("restore", &env);
    assert_eq!(code, 0, "{run:#}\n{stderr}");
    everything += &format!("{run}{stderr}");
    let data = lab.data(&run, "scratch_database");
    assert!(data.as_str().unwrap().starts_with("drover_restore_"), "{data}");
    assert_eq!(lab.data(&run, "sha256").as_str().unwrap(), sha256_hex(&dump));
    assert_eq!(lab.data(&run, "bytes_restored").as_u64().unwrap(), dump.len() as u64);
    assert_eq!(lab.data(&run, "value").as_str().unwrap(), "1000");
    let m = lab.data(&run, "measurements");
    assert!(m["restore_s"].as_f64().unwrap() > 0.0, "{m}");
    let age = m["backup_age_s"].as_f64().unwrap();
    let expected = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() - made;
    assert!((age - expected).abs() < 30.0, "age {age}, expected about {expected}");
    assert_eq!(scratch_databases(&pg), "", "the scratch database was left behind");

    // The query answers something else: failed, named, dropped all the same.
    lab.runbook("wrong", &check("wrong", "db/shop.dump", "999"));
    let (code, run, stderr) = lab.verify("wrong", &env);
    assert_eq!(code, 1, "{run:#}\n{stderr}");
    let e = error(&run, "wrong");
    assert!(e.contains("returned `1000`, expected `999`"), "{e}");
    everything += &format!("{run}{stderr}");
    assert_eq!(scratch_databases(&pg), "");

    // Not a dump: pg_restore's own message, and nothing left behind.
    lab.runbook("garbage", &check("garbage", "db/garbage.dump", "1000"));
    let (code, run, stderr) = lab.verify("garbage", &env);
    assert_eq!(code, 1, "{run:#}\n{stderr}");
    let e = error(&run, "garbage");
    assert!(
        e.contains("pg_restore of `db/garbage.dump`") && e.contains("failed"),
        "{e}"
    );
    everything += &format!("{run}{stderr}");
    assert_eq!(scratch_databases(&pg), "");

    // A missing object: a clear 404, before any database is created.
    lab.runbook("missing", &check("missing", "db/none.dump", "1000"));
    let (code, run, _) = lab.verify("missing", &env);
    assert_eq!(code, 1, "{run:#}");
    assert!(error(&run, "missing").contains("not found"), "{run:#}");
    assert_eq!(scratch_databases(&pg), "");

    assert!(
        !everything.contains(pg.password()),
        "the database password leaked:\n{everything}"
    );
    assert!(!everything.contains(lab.server.secret_key()), "the S3 secret leaked");
}

#[test]
fn s3_evidence_archive_uploads_each_sealed_bundle_under_retention_and_retries_a_refused_upload_on_moto() {
    let lab = Lab::new(S3Kind::Moto);
    lab.bucket("replica", true); // Object Lock enabled, no default retention
    lab.put("db/a.dump", b"a backup", true);
    let archive_to = |store: &str| {
        let c = config(&lab.server.endpoint()).replace(
            "cmdb: cmdb.yaml",
            &format!(
                "evidence: {{archive: {{object_store: {store}, prefix: evidence/, retention_days: 7, mode: GOVERNANCE}}}}\ncmdb: cmdb.yaml"
            ),
        );
        lab.fx.write("drover.yaml", &c);
    };
    lab.runbook(
        "backups",
        "  - {name: backups, uses: s3.verify-backups, with: {store: store, prefix: db/, max_age: 1h}}\n",
    );
    let drover = |args: &[&str]| {
        let out = lab
            .fx
            .drover()
            .args(args)
            .env("DROVER_IT_S3_KEY", lab.server.access_key())
            .env("DROVER_IT_S3_SECRET", &lab.secret)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // A bucket without Object Lock: refused, journaled, the outcome unchanged.
    archive_to("store");
    let (code, run, stderr) = lab.verify("backups", &[]);
    assert_eq!(code, 0, "the archive must not change the outcome: {run:#}\n{stderr}");
    assert!(stderr.contains("evidence archive FAILED"), "{stderr}");
    assert!(stderr.contains("has no Object Lock"), "{stderr}");
    assert_eq!(run["archive"]["status"], "failed", "{run:#}");
    let id = run["id"].as_str().unwrap().to_owned();
    let (_, shown, _) = drover(&["runs", "show", &id]);
    assert!(
        shown.contains("evidence archive FAILED") && shown.contains("has no Object Lock"),
        "{shown}"
    );
    let (_, md, _) = drover(&["report", &id, "--format", "md"]);
    assert!(
        md.contains("upload FAILED") && md.contains("evidence archive upload"),
        "{md}"
    );
    let (code, out, stderr) = drover(&["evidence", "archive", &id]);
    assert_eq!(code, 1, "{out}{stderr}");
    assert!(out.contains("has no Object Lock"), "{out}");

    // Pointed at a locked bucket, the retry uploads; the journal is sealed again.
    archive_to("replica");
    let (code, out, stderr) = drover(&["evidence", "archive", &id, "--format", "json"]);
    assert_eq!(code, 0, "{out}{stderr}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let a = &v["archive"];
    assert_eq!(a["status"], "archived", "{v:#}");
    assert_eq!(a["key"], format!("evidence/{id}.bundle.json"));
    assert_eq!(a["mode"], "GOVERNANCE");
    let version = a["version_id"].as_str().expect("a version id").to_owned();
    let (code, out, _) = drover(&["evidence", "verify", &id]);
    assert_eq!(code, 0, "the journal after the archive record: {out}");
    // Current now: a second call uploads nothing.
    let (code, out, _) = drover(&["evidence", "archive", &id]);
    assert_eq!(code, 0);
    assert!(out.contains("already archived"), "{out}");

    // The object: that version, under retention, and a bundle that verifies offline
    // with the SHA-256 the journal recorded.
    let key = format!("evidence/{id}.bundle.json");
    let (head, body) = lab.rt.block_on(async {
        let head = lab
            .client
            .head_object()
            .bucket("replica")
            .key(&key)
            .version_id(&version)
            .send()
            .await
            .unwrap();
        let body = lab
            .client
            .get_object()
            .bucket("replica")
            .key(&key)
            .version_id(&version)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        (head, body)
    });
    assert_eq!(head.object_lock_mode().map(|m| m.as_str()), Some("GOVERNANCE"));
    let until = head.object_lock_retain_until_date().unwrap().secs() as f64;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(
        (until - now - 7.0 * 86_400.0).abs() < 120.0,
        "retain until {until}, now {now}"
    );
    assert_eq!(sha256_hex(&body), a["bundle_sha256"].as_str().unwrap());
    let file = lab.fx.path("archived.bundle.json");
    std::fs::write(&file, &body).unwrap();
    let (code, out, _) = drover(&["evidence", "verify", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");

    // A new run is archived as it is sealed, without being asked.
    let (code, run, stderr) = lab.verify("backups", &[]);
    assert_eq!(code, 0, "{run:#}\n{stderr}");
    assert!(stderr.contains("evidence archived: replica:evidence/"), "{stderr}");
    assert_eq!(run["archive"]["status"], "archived", "{run:#}");
}

#[test]
fn s3_a_corrupt_backup_opens_a_corrective_action_by_its_key_closed_when_it_verifies_again_on_s3s_fs() {
    let lab = Lab::new(S3Kind::S3sFs);
    let a = vec![b'a'; 100_000];
    let b = b"second backup".repeat(500);
    lab.put("db/a.dump", &a, true);
    lab.put("db/b.dump", &b, false);
    lab.sidecar("db/b.dump", &b);
    lab.runbook("backups", VERIFY);
    let (code, run, stderr) = lab.verify("backups", &[]);
    assert_eq!(code, 0, "{run:#}\n{stderr}");
    let actions = |open: bool| -> Vec<Value> {
        let mut cmd = lab.fx.drover();
        cmd.args(["actions", "list", "--format", "json"]);
        if open {
            cmd.arg("--open");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    assert!(actions(false).is_empty());

    // Bit rot under the server: the run fails and the action names the key.
    lab.rot("db/b.dump");
    let (code, bad, _) = lab.verify("backups", &[]);
    assert_eq!(code, 1, "{bad:#}");
    let open = actions(true);
    assert_eq!(open.len(), 1, "{open:#?}");
    let x = &open[0];
    assert_eq!(x["kind"], "backup", "{x:#}");
    assert_eq!(x["finding"], "backup:store/db/b.dump");
    assert_eq!(x["detail"]["key"], "store/db/b.dump");
    assert_eq!(x["detail"]["status"], "corrupt");
    assert_eq!(x["detail"]["object"]["key"], "db/b.dump");
    assert_eq!(x["ci"], "svc");
    assert_eq!(x["run"], bad["id"]);
    assert!(
        x["summary"]
            .as_str()
            .unwrap()
            .starts_with("backup `store/db/b.dump` is corrupt"),
        "{x:#}"
    );
    // The intact backup is no finding; the failed check is not a second one.
    assert!(!serde_json::to_string(&open).unwrap().contains("db/a.dump"));

    // Replaced by an intact copy: the next passing verification closes it.
    lab.put("db/b.dump", &b, false);
    let (code, good, _) = lab.verify("backups", &[]);
    assert_eq!(code, 0, "{good:#}");
    assert!(actions(true).is_empty(), "{:#?}", actions(false));
    let closed = &actions(false)[0];
    assert_eq!(closed["closed"]["run"], good["id"]);
    assert!(
        closed["closed"]["note"]
            .as_str()
            .unwrap()
            .contains("no longer finds `store/db/b.dump` bad"),
        "{closed:#}"
    );
}
