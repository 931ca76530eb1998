//! The evidence archive: with `evidence.archive` in the config, every sealed run's
//! bundle (as `drover evidence export` writes it) is uploaded to an object store under
//! Object Lock retention, and the upload is journaled (key, version id, retain-until,
//! the bundle's SHA-256) and the journal sealed again. A failed upload is journaled too
//! and never changes the run's outcome or exit code; it shows in `runs show` and the
//! report, and `drover evidence archive RUN` retries it.
//!
//! Each upload is a new version of `PREFIX<run id>.bundle.json`: a run sealed again
//! later (`drover ack`) is archived again, and the versions before stay retained.

use std::time::Duration;

use drover_engine::evidence::{Signer, export_bundle};
use drover_engine::state::ArchiveState;
use drover_engine::{Engine, Event, RunState};
use drover_model::Config;

use crate::Failure;
use crate::commands::records::build_report;

/// How long one upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// What happened when a run's evidence was (or was not) archived.
#[derive(Debug)]
pub enum Archival {
    /// `evidence.archive` is not configured.
    Off,
    /// The run is not finished and sealed yet.
    NotSealed,
    /// The archive already holds a current bundle.
    Current(ArchiveState),
    /// Uploaded now.
    Uploaded(ArchiveState),
    /// The upload failed (journaled).
    Failed(ArchiveState),
}

impl Archival {
    /// One line for the terminal, if there is anything to say.
    pub fn line(&self, run_id: &str) -> Option<String> {
        match self {
            Archival::Off | Archival::NotSealed => None,
            Archival::Current(a) => Some(format!("evidence already archived: {}", describe(a))),
            Archival::Uploaded(a) => Some(format!("evidence archived: {}", describe(a))),
            Archival::Failed(a) => Some(format!(
                "evidence archive FAILED ({}); the run's outcome is unchanged; retry with `drover evidence archive {run_id}`",
                a.error.as_deref().unwrap_or("unknown error")
            )),
        }
    }
}

/// `STORE:KEY (version V), MODE until T`.
pub fn describe(a: &ArchiveState) -> String {
    format!(
        "{}:{}{}, {} until {}",
        a.store,
        a.key,
        a.version_id
            .as_deref()
            .map(|v| format!(" (version {v})"))
            .unwrap_or_default(),
        a.mode.as_deref().unwrap_or("?"),
        a.retain_until.as_deref().unwrap_or("?"),
    )
}

/// Archives the run's evidence if the config asks for it and the archive does not hold
/// the current bundle. Errors only when the state store fails; an upload that fails is
/// an [`Archival::Failed`].
pub async fn archive(engine: &Engine, config: &Config, run_id: &str) -> Result<(Archival, RunState), Failure> {
    let state = crate::commands::runs::state_of(&engine.store, run_id)?;
    let Some(conf) = &config.evidence.archive else {
        return Ok((Archival::Off, state));
    };
    if state.finished.is_none() || !state.sealed {
        return Ok((Archival::NotSealed, state));
    }
    if state.archive_current()
        && let Some(a) = &state.archive
    {
        return Ok((Archival::Current(a.clone()), state));
    }
    let key = format!("{}{run_id}.bundle.json", conf.prefix);
    let store_name = conf.object_store.value.clone();
    let head_seq = state.last_seq.unwrap_or(0);
    let upload = async {
        let signer = match &engine.signer {
            Some(s) => s.clone(),
            None => std::sync::Arc::new(Signer::load_or_create(&config.evidence.signing_key)?),
        };
        let report = build_report(&engine.store, run_id).map_err(|e| e.to_string())?.json();
        let records = engine.store.records(run_id).map_err(|e| e.to_string())?;
        let bundle = export_bundle(run_id, &records, &report, &signer)?.into_bytes();
        let store = drover_plugin_s3::Store::resolve(config, &store_name)
            .await
            .map_err(|e| e.to_string())?;
        drover_plugin_s3::archive::upload_locked(
            &store,
            &key,
            bundle,
            conf.mode.as_str(),
            conf.retention_days.value,
            UPLOAD_TIMEOUT,
        )
        .await
        .map_err(|e| e.to_string())
    };
    let event = match upload.await {
        Ok(a) => Event::EvidenceArchived {
            store: store_name,
            bucket: a.bucket,
            key: a.key,
            version_id: a.version_id,
            mode: a.mode,
            retain_until: a.retain_until,
            bundle_sha256: a.sha256,
            head_seq,
        },
        Err(error) => Event::EvidenceArchiveFailed {
            store: store_name,
            key,
            error,
            head_seq,
        },
    };
    let ok = matches!(event, Event::EvidenceArchived { .. });
    let state = engine.record_archive(run_id, event).await.map_err(|e| match e {
        drover_engine::EngineError::Refused(m) | drover_engine::EngineError::Invalid(m) => {
            Failure::Usage(anyhow::anyhow!(m))
        }
        other => Failure::Other(anyhow::anyhow!(other)),
    })?;
    let a = state.archive.clone().expect("an archive record was just journaled");
    Ok((if ok { Archival::Uploaded(a) } else { Archival::Failed(a) }, state))
}
