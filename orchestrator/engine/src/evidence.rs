//! Evidence: every journal record carries the SHA-256 of the one before it (a chain per
//! run), and when a run ends its head is signed with an ed25519 key (the `sealed`
//! record). Anyone holding the records can check them offline ([`verify_records`]).
//!
//! Hashing and signatures are ring's (already drover's TLS crypto provider).

use std::io::Write;
use std::path::Path;

use drover_model::SecretRef;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::Serialize;

use crate::journal::{Event, Record};
use crate::store::StoredRecord;

/// Version tag of the signed message and of exported bundles.
pub const FORMAT: &str = "drover-evidence/1";

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// The fingerprint of a public key, shown in reports: `SHA256:` and the hex digest.
pub fn fingerprint(public_key: &[u8]) -> String {
    format!("SHA256:{}", sha256_hex(public_key))
}

/// What a seal signs: the format, the run, and the head of its chain.
pub fn seal_message(run_id: &str, head_seq: u64, head: &str) -> Vec<u8> {
    format!("{FORMAT}\n{run_id}\n{head_seq}\n{head}\n").into_bytes()
}

/// Checks an ed25519 signature (all hex).
pub fn verify_signature(public_key_hex: &str, message: &[u8], signature_hex: &str) -> bool {
    match (unhex(public_key_hex), unhex(signature_hex)) {
        (Some(pk), Some(sig)) => UnparsedPublicKey::new(&ED25519, pk).verify(message, &sig).is_ok(),
        _ => false,
    }
}

/// The evidence signing key.
pub struct Signer {
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl Signer {
    /// From a 32-byte seed.
    pub fn from_seed(seed: &[u8]) -> Result<Signer, String> {
        Ed25519KeyPair::from_seed_unchecked(seed)
            .map(|key| Signer { key })
            .map_err(|_| "the signing key must be 32 bytes (64 hex digits)".to_owned())
    }

    /// Loads the key named by `evidence.signing_key`; a `{file:}` key that does not exist
    /// yet is created (mode 0600).
    pub fn load_or_create(secret: &SecretRef) -> Result<Signer, String> {
        if let SecretRef::File(path) = secret
            && !path.exists()
        {
            create_key_file(path)?;
        }
        let value = secret.resolve().map_err(|e| format!("evidence signing key: {e}"))?;
        let seed = unhex(value.expose().trim())
            .ok_or_else(|| "evidence signing key: expected 64 hex digits (an ed25519 seed)".to_owned())?;
        Signer::from_seed(&seed).map_err(|e| format!("evidence signing key: {e}"))
    }

    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    pub fn public_key_hex(&self) -> String {
        hex(self.public_key())
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(self.public_key())
    }

    /// Signs `message`; the signature as hex.
    pub fn sign(&self, message: &[u8]) -> String {
        hex(self.key.sign(message).as_ref())
    }
}

/// Creates a new key at `path`, unless another process does so first. The key is written
/// to a temporary file and linked into place, so nobody ever reads a half-written key and
/// two processes starting at once end up with the same key.
fn create_key_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| "cannot get random bytes for a new signing key".to_owned())?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("new.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(format!("{}\n", hex(&seed)).as_bytes())?;
            f.sync_all()
        });
    let linked = written.and_then(|()| match std::fs::hard_link(&tmp, path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    });
    let _ = std::fs::remove_file(&tmp);
    linked.map_err(|e| format!("cannot create the signing key {}: {e}", path.display()))
}

/// What checking a run's records found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub run_id: String,
    pub records: usize,
    /// Hash of the last record.
    pub head: Option<String>,
    /// The key of the last seal checked, when the run is sealed.
    pub fingerprint: Option<String>,
    pub public_key: Option<String>,
    pub signature: Option<String>,
    /// Every seal of the chain, in order (a run is sealed again when records are added
    /// after its seal, e.g. an acknowledgement).
    pub seals: Vec<SealInfo>,
    /// The keys the check accepted (`evidence.trusted_keys`, or `--key`). Empty: not
    /// pinned, so the check shows that the records are unchanged since they were
    /// sealed, not who sealed them.
    pub trusted_keys: Vec<String>,
    /// The first problem: the record where the chain breaks.
    pub problem: Option<Problem>,
}

/// One `sealed` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SealInfo {
    pub record: u64,
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Position of the first bad record (its sequence number when readable).
    pub record: u64,
    pub message: String,
}

impl Verification {
    fn new(run_id: &str, records: usize, trusted: &[String]) -> Verification {
        Verification {
            run_id: run_id.to_owned(),
            records,
            head: None,
            fingerprint: None,
            public_key: None,
            signature: None,
            seals: Vec::new(),
            trusted_keys: trusted
                .iter()
                .map(|k| k.to_ascii_lowercase().replacen("sha256:", "SHA256:", 1))
                .collect(),
            problem: None,
        }
    }

    pub fn intact(&self) -> bool {
        self.problem.is_none()
    }

    /// Whether the sealing keys were checked against pinned ones.
    pub fn pinned(&self) -> bool {
        !self.trusted_keys.is_empty()
    }

    /// `Some(true)` when pinned and every seal is by a pinned key, `Some(false)` when
    /// pinned and a seal is not, `None` when not pinned or not sealed (nothing is known
    /// about who sealed it).
    pub fn key_trusted(&self) -> Option<bool> {
        if !self.pinned() || self.seals.is_empty() {
            return None;
        }
        Some(self.seals.iter().all(|s| self.trusts(&s.fingerprint)))
    }

    fn trusts(&self, fingerprint: &str) -> bool {
        self.trusted_keys.iter().any(|k| k.eq_ignore_ascii_case(fingerprint))
    }
}

/// [`verify_records_pinned`] without pinned keys.
pub fn verify_records(run_id: &str, records: &[StoredRecord], require_seal: bool) -> Verification {
    verify_records_pinned(run_id, records, require_seal, &[])
}

/// Checks a run's records: consecutive sequence numbers, each `prev` equal to the
/// SHA-256 of the record before, and every `sealed` record's signature over the head
/// before it. A run may be sealed more than once (records added after a seal end in a
/// new seal); records after the last seal are an unsealed tail and fail the check.
/// `require_seal`: a finished run must be sealed.
///
/// `trusted` (fingerprints): when not empty, every seal must be by one of these keys;
/// when empty, every seal must be by the key of the first one (a change of key is
/// accepted only between pinned keys).
pub fn verify_records_pinned(
    run_id: &str,
    records: &[StoredRecord],
    require_seal: bool,
    trusted: &[String],
) -> Verification {
    let mut v = Verification::new(run_id, records.len(), trusted);
    let mut prev: Option<String> = None;
    let fail = |v: &mut Verification, record: u64, message: String| {
        v.problem = Some(Problem { record, message });
    };
    for (i, stored) in records.iter().enumerate() {
        let i = i as u64;
        let rec: Record = match serde_json::from_str(&stored.json) {
            Ok(r) => r,
            Err(e) => {
                fail(&mut v, i, format!("record {i} is not a valid journal record: {e}"));
                return v;
            }
        };
        if rec.seq != i || stored.seq != i {
            fail(
                &mut v,
                i,
                format!(
                    "record {i} has sequence number {} (records are missing or out of order)",
                    rec.seq
                ),
            );
            return v;
        }
        if rec.prev != prev {
            fail(
                &mut v,
                i,
                format!(
                    "record {i} does not follow record {}: its `prev` is not the hash of the record before (changed, removed or inserted records)",
                    i.saturating_sub(1)
                ),
            );
            return v;
        }
        let hash = sha256_hex(stored.json.as_bytes());
        if let Event::Sealed {
            head,
            signature,
            public_key,
            fingerprint: fp,
        } = &rec.event
        {
            if Some(head) != prev.as_ref() {
                fail(
                    &mut v,
                    i,
                    format!("the seal (record {i}) names a head that is not the previous record's hash"),
                );
                return v;
            }
            let Some(pk) = unhex(public_key) else {
                fail(&mut v, i, format!("the seal (record {i}) has a malformed public key"));
                return v;
            };
            if fingerprint(&pk) != *fp {
                fail(
                    &mut v,
                    i,
                    format!("the seal (record {i}) names a fingerprint that is not its key's"),
                );
                return v;
            }
            if !verify_signature(public_key, &seal_message(run_id, i.saturating_sub(1), head), signature) {
                fail(
                    &mut v,
                    i,
                    format!(
                        "the seal's signature (record {i}) does not verify: the records were changed after signing"
                    ),
                );
                return v;
            }
            let first = v.seals.first().cloned();
            v.seals.push(SealInfo {
                record: i,
                fingerprint: fp.clone(),
            });
            v.fingerprint = Some(fp.clone());
            v.public_key = Some(public_key.clone());
            v.signature = Some(signature.clone());
            if v.pinned() && !v.trusts(fp) {
                let message = format!(
                    "the seal (record {i}) was made by key {fp}, which is not pinned (trusted keys: {})",
                    v.trusted_keys.join(", ")
                );
                fail(&mut v, i, message);
                return v;
            }
            if let Some(first) = first.filter(|s| !v.pinned() && s.fingerprint != *fp) {
                let message = format!(
                    "the seal (record {i}) was made by key {fp}, but record {} was sealed by key {}: a run re-sealed by another key is accepted only when both keys are pinned (evidence.trusted_keys)",
                    first.record, first.fingerprint
                );
                fail(&mut v, i, message);
                return v;
            }
        }
        prev = Some(hash);
    }
    v.head = prev;
    let n = records.len() as u64;
    if let Some(last) = v.seals.last().map(|s| s.record)
        && last + 1 < n
    {
        fail(
            &mut v,
            last + 1,
            format!(
                "records {} to {} follow the last seal (record {last}) and are not sealed: they were added after the run was signed",
                last + 1,
                n - 1
            ),
        );
    } else if require_seal && v.seals.is_empty() {
        fail(
            &mut v,
            n,
            format!(
                "the run is not sealed: no signed record after record {}",
                n.saturating_sub(1)
            ),
        );
    }
    v
}

/// An exported evidence bundle: one self-contained JSON file with the run's journal
/// records (exactly as stored, so their hashes can be recomputed), the key that sealed
/// them, the continuity report, and a signature over everything else in the file.
///
/// The file is the bundle's canonical JSON (no whitespace, keys in a fixed order) and a
/// newline: [`verify_bundle`] re-serializes what it read and requires the same bytes,
/// so no byte of the file is slack.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub format: String,
    pub run_id: String,
    /// The journal records, in order, as stored.
    pub records: Vec<String>,
    pub public_key: String,
    pub fingerprint: String,
    /// The continuity report, as JSON text (kept as text so that it round-trips byte
    /// for byte; numbers inside a parsed value might not).
    pub report: String,
    /// ed25519 signature (hex) over the SHA-256 of the bundle without this field.
    pub bundle_signature: String,
}

fn canonical(b: &Bundle) -> String {
    serde_json::to_string(b).unwrap_or_default()
}

fn bundle_digest(b: &Bundle) -> Vec<u8> {
    let unsigned = Bundle {
        bundle_signature: String::new(),
        ..b.clone()
    };
    let mut msg = format!("{FORMAT}/bundle\n").into_bytes();
    msg.extend_from_slice(sha256_hex(canonical(&unsigned).as_bytes()).as_bytes());
    msg
}

/// Builds the bundle file of a sealed run.
pub fn export_bundle(
    run_id: &str,
    records: &[StoredRecord],
    report: &serde_json::Value,
    signer: &Signer,
) -> Result<String, String> {
    let check = verify_records(run_id, records, true);
    if let Some(p) = &check.problem {
        return Err(format!(
            "run {run_id} cannot be exported: record {}: {}",
            p.record, p.message
        ));
    }
    if check.public_key.as_deref() != Some(signer.public_key_hex().as_str()) {
        return Err(format!(
            "run {run_id} was sealed with key {}, not with the configured key {}",
            check.fingerprint.unwrap_or_default(),
            signer.fingerprint()
        ));
    }
    let mut bundle = Bundle {
        format: FORMAT.to_owned(),
        run_id: run_id.to_owned(),
        records: records.iter().map(|r| r.json.clone()).collect(),
        public_key: signer.public_key_hex(),
        fingerprint: signer.fingerprint(),
        report: serde_json::to_string(report).map_err(|e| e.to_string())?,
        bundle_signature: String::new(),
    };
    bundle.bundle_signature = signer.sign(&bundle_digest(&bundle));
    Ok(canonical(&bundle) + "\n")
}

/// Checks a bundle file offline: that it is a bundle, that its records form an intact
/// chain sealed by its key, that nothing else in it changed after signing, and that it
/// is byte for byte in canonical form. The first problem found is reported.
pub fn verify_bundle(bytes: &[u8]) -> Verification {
    verify_bundle_pinned(bytes, &[])
}

/// [`verify_bundle`], accepting only seals by the `trusted` keys when there are any
/// (see [`verify_records_pinned`]).
pub fn verify_bundle_pinned(bytes: &[u8], trusted: &[String]) -> Verification {
    let bad = |message: String| Verification {
        problem: Some(Problem { record: 0, message }),
        ..Verification::new("", 0, trusted)
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => return bad(format!("not a bundle: invalid UTF-8 at byte {}", e.valid_up_to())),
    };
    let bundle: Bundle = match serde_json::from_str(text) {
        Ok(b) => b,
        Err(e) => return bad(format!("not a valid evidence bundle: {e}")),
    };
    let records: Vec<StoredRecord> = bundle
        .records
        .iter()
        .enumerate()
        .map(|(i, json)| StoredRecord {
            seq: i as u64,
            json: json.clone(),
        })
        .collect();
    let mut v = verify_records_pinned(&bundle.run_id, &records, true, trusted);
    if v.problem.is_some() {
        return v;
    }
    let n = records.len() as u64;
    let mut fail = |message: String| {
        v.problem = Some(Problem { record: n, message });
    };
    if bundle.format != FORMAT {
        fail(format!("unknown bundle format `{}`", bundle.format));
    } else if v.public_key.as_deref() != Some(bundle.public_key.as_str()) {
        fail("the bundle's public key is not the key that sealed the records".into());
    } else if fingerprint(&unhex(&bundle.public_key).unwrap_or_default()) != bundle.fingerprint {
        fail("the bundle's fingerprint is not its key's".into());
    } else if !verify_signature(&bundle.public_key, &bundle_digest(&bundle), &bundle.bundle_signature) {
        fail("the bundle's signature does not verify: the report or other fields were changed".into());
    } else if canonical(&bundle) + "\n" != text {
        let expected = canonical(&bundle) + "\n";
        let at = expected
            .bytes()
            .zip(text.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.len().min(text.len()));
        fail(format!(
            "the file is not in canonical form (byte {at} differs): bytes were added or changed"
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a run's stored records: `Some(signer)` seals the chain so far, `None`
    /// adds a plain record.
    fn chain(run: &str, items: &[Option<&Signer>]) -> Vec<StoredRecord> {
        let mut out: Vec<StoredRecord> = Vec::new();
        let mut prev: Option<String> = None;
        for (i, item) in items.iter().enumerate() {
            let event = match item {
                None => Event::Halted {
                    reason: format!("record {i}"),
                    preflight: false,
                },
                Some(signer) => {
                    let head = prev.clone().expect("a seal follows a record");
                    Event::Sealed {
                        signature: signer.sign(&seal_message(run, i as u64 - 1, &head)),
                        head,
                        public_key: signer.public_key_hex(),
                        fingerprint: signer.fingerprint(),
                    }
                }
            };
            let rec = Record {
                seq: i as u64,
                at: "2026-01-01T00:00:00.000Z".into(),
                t: i as f64,
                prev: prev.clone(),
                writer: None,
                event,
            };
            let json = serde_json::to_string(&rec).unwrap();
            prev = Some(sha256_hex(json.as_bytes()));
            out.push(StoredRecord { seq: i as u64, json });
        }
        out
    }

    fn keys() -> (Signer, Signer) {
        (
            Signer::from_seed(&[1; 32]).unwrap(),
            Signer::from_seed(&[2; 32]).unwrap(),
        )
    }

    #[test]
    fn an_unpinned_check_says_so() {
        let (a, _) = keys();
        let v = verify_records("r", &chain("r", &[None, None, Some(&a)]), true);
        assert!(v.intact(), "{v:?}");
        assert!(!v.pinned());
        assert_eq!(v.key_trusted(), None);
        assert_eq!(v.fingerprint, Some(a.fingerprint()));
    }

    #[test]
    fn a_pinned_key_is_trusted_and_another_is_refused_by_name() {
        let (a, b) = keys();
        let records = chain("r", &[None, Some(&a)]);
        let v = verify_records_pinned("r", &records, true, &[b.fingerprint(), a.fingerprint().to_uppercase()]);
        assert!(v.intact(), "{v:?}");
        assert_eq!(v.key_trusted(), Some(true));
        let v = verify_records_pinned("r", &records, true, &[b.fingerprint()]);
        let p = v.problem.clone().expect("an untrusted key fails");
        assert_eq!(p.record, 1);
        assert!(
            p.message.contains(&a.fingerprint()) && p.message.contains(&b.fingerprint()),
            "{p:?}"
        );
        assert_eq!(v.key_trusted(), Some(false));
        assert_eq!(v.fingerprint, Some(a.fingerprint()), "the key found is named");
    }

    #[test]
    fn a_run_sealed_again_verifies_and_every_seal_is_checked() {
        let (a, b) = keys();
        let records = chain("r", &[None, None, Some(&a), None, Some(&a)]);
        let v = verify_records("r", &records, true);
        assert!(v.intact(), "{v:?}");
        assert_eq!(v.seals.iter().map(|s| s.record).collect::<Vec<_>>(), [2, 4]);
        // A broken first seal fails even though the last one is fine.
        let mut bad = records.clone();
        let mut first: Record = serde_json::from_str(&bad[2].json).unwrap();
        if let Event::Sealed { signature, .. } = &mut first.event {
            *signature = b.sign(b"something else");
        }
        bad[2].json = serde_json::to_string(&first).unwrap();
        let v = verify_records("r", &bad, true);
        assert_eq!(v.problem.map(|p| p.record), Some(2));
        // Re-sealed by another key: only when both are pinned.
        let rekeyed = chain("r", &[None, Some(&a), None, Some(&b)]);
        let v = verify_records("r", &rekeyed, true);
        let p = v.problem.expect("a change of key without pins fails");
        assert_eq!(p.record, 3);
        assert!(p.message.contains(&a.fingerprint()) && p.message.contains(&b.fingerprint()));
        assert!(verify_records_pinned("r", &rekeyed, true, &[a.fingerprint(), b.fingerprint()]).intact());
        let v = verify_records_pinned("r", &rekeyed, true, &[a.fingerprint()]);
        assert_eq!(v.problem.map(|p| p.record), Some(3));
    }

    #[test]
    fn records_after_the_last_seal_fail() {
        let (a, _) = keys();
        for require_seal in [true, false] {
            let v = verify_records("r", &chain("r", &[None, Some(&a), None, None]), require_seal);
            let p = v.problem.expect("an unsealed tail fails");
            assert_eq!(p.record, 2);
            assert!(
                p.message.contains("records 2 to 3 follow the last seal"),
                "{}",
                p.message
            );
        }
        let v = verify_records("r", &chain("r", &[None, Some(&a), None, Some(&a), None]), true);
        assert_eq!(v.problem.map(|p| p.record), Some(4));
        // A run that has not finished is not sealed yet, and that is fine.
        assert!(verify_records("r", &chain("r", &[None, None]), false).intact());
        assert!(!verify_records("r", &chain("r", &[None, None]), true).intact());
    }
}
