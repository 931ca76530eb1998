//! Connecting to a configured object store, and saying what went wrong without ever
//! saying a key.
//!
//! A store is `endpoint`, `region`, `bucket`, `path_style` and credentials: the config's
//! `access_key_id`/`secret_access_key` secrets (resolved here, at the call that needs
//! them), or the default AWS chain (environment, profile, web identity, IMDS) when the
//! config names none. The HTTP client is hyper with rustls and ring: no aws-lc, no
//! OpenSSL. The SDK's own retries are off (the engine owns retries and polling) and
//! every call is bounded by the attempt's deadline and cancellation token.
//!
//! Errors name the store by its config name and the endpoint, never a key: the SDK's
//! messages go through a [`Redactor`] holding both keys in case a layer quotes them.

use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;
use drover_model::Config;
use drover_plugin_api::{ActionError, CancellationToken};

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Blanks secrets out of messages.
#[derive(Clone, Default)]
pub struct Redactor(Vec<String>);

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor([redacted])")
    }
}

impl Redactor {
    fn add(&mut self, secret: &str) {
        if secret.len() >= 4 && !self.0.iter().any(|s| s == secret) {
            self.0.push(secret.to_owned());
            self.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    pub fn clean(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.0 {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "[redacted]");
            }
        }
        out
    }
}

/// A configured object store with its client. No `Debug` that shows a key.
#[derive(Clone)]
pub struct Store {
    pub name: String,
    pub endpoint: String,
    pub bucket: String,
    pub client: Client,
    redact: Redactor,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Looks `name` up in the config and builds its client. Resolves the key secrets.
    pub async fn resolve(config: &Config, name: &str) -> Result<Store, ActionError> {
        let st = config
            .object_stores
            .iter()
            .find(|s| s.name.value == name)
            .ok_or_else(|| ActionError::Permanent(format!("unknown object store `{name}`")))?;
        let mut redact = Redactor::default();
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(st.region.clone()))
            .endpoint_url(st.endpoint.value.clone())
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(timeouts);
        match (&st.access_key_id, &st.secret_access_key) {
            (Some(id), Some(secret)) => {
                let resolve = |r: &drover_model::SecretRef, what: &str| {
                    r.resolve().map_err(|e| {
                        ActionError::Permanent(format!("object store `{name}`: cannot resolve its {what} {r}: {e}"))
                    })
                };
                let id = resolve(id, "access_key_id")?;
                let secret = resolve(secret, "secret_access_key")?;
                redact.add(id.expose());
                redact.add(secret.expose());
                let creds = Credentials::new(id.expose(), secret.expose(), None, None, "drover-config");
                loader = loader.credentials_provider(SharedCredentialsProvider::new(creds));
            }
            (None, None) => {}
            _ => {
                return Err(ActionError::Permanent(format!(
                    "object store `{name}`: set both access_key_id and secret_access_key, or neither (the default AWS chain)"
                )));
            }
        }
        let sdk = loader.load().await;
        let conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(st.path_style)
            // drover recomputes digests itself: a corrupt object is a finding, not a
            // failed download.
            .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
            .build();
        Ok(Store {
            name: name.to_owned(),
            endpoint: st.endpoint.value.clone(),
            bucket: st.bucket.value.clone(),
            client: Client::from_conf(conf),
            redact,
        })
    }

    /// Turns an SDK error into an action error that names the store, the operation and
    /// the object, and says what to do: 403 and 404 are permanent, throttling, 5xx,
    /// timeouts and refused connections retryable.
    pub fn error<E>(&self, op: &str, key: Option<&str>, e: SdkError<E, HttpResponse>) -> ActionError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let what = match key {
            Some(k) => format!("{op} `{k}` in bucket `{}` of object store `{}`", self.bucket, self.name),
            None => format!("{op} on bucket `{}` of object store `{}`", self.bucket, self.name),
        };
        let out = match &e {
            SdkError::DispatchFailure(d) => {
                let cause = chain(&e);
                let kind = if d.is_timeout() {
                    "timed out connecting"
                } else if d.is_io() {
                    "cannot connect"
                } else {
                    "cannot reach it"
                };
                ActionError::Retryable(format!("{what}: {kind} to {}: {cause}", self.endpoint))
            }
            SdkError::TimeoutError(_) => {
                ActionError::Retryable(format!("{what}: timed out talking to {}", self.endpoint))
            }
            SdkError::ResponseError(_) => ActionError::Retryable(format!(
                "{what}: unreadable answer from {}: {}",
                self.endpoint,
                chain(&e)
            )),
            SdkError::ServiceError(s) => {
                let status = s.raw().status().as_u16();
                let code = s.err().code().unwrap_or("");
                let msg = s.err().message().unwrap_or("");
                let detail = format!("HTTP {status}{}{}", sep(code), sep(msg));
                match status {
                    403 => ActionError::Permanent(format!(
                        "{what}: access denied ({detail}); check the store's access_key_id and secret_access_key and its permissions"
                    )),
                    401 => ActionError::Permanent(format!("{what}: not authenticated ({detail})")),
                    404 => ActionError::Permanent(format!("{what}: not found ({detail})")),
                    429 | 500..=599 => ActionError::Retryable(format!("{what}: the server failed ({detail})")),
                    _ => ActionError::Permanent(format!("{what}: refused ({detail})")),
                }
            }
            _ => ActionError::Permanent(format!("{what}: {}", chain(&e))),
        };
        self.clean(out)
    }

    /// Blanks any key out of an error message.
    pub fn clean(&self, e: ActionError) -> ActionError {
        e.map_message(|m| self.redact.clean(&m))
    }
}

/// An object's body being read, one chunk at a time (constant memory), with errors that
/// name the object and how far the download got.
pub struct Download<'a> {
    store: &'a Store,
    key: &'a str,
    body: aws_sdk_s3::primitives::ByteStream,
    read: u64,
}

impl Store {
    /// Starts reading `key`.
    pub async fn download<'a>(&'a self, key: &'a str) -> Result<Download<'a>, ActionError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error("reading", Some(key), e))?;
        Ok(Download {
            store: self,
            key,
            body: out.body,
            read: 0,
        })
    }
}

impl std::fmt::Debug for Download<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("store", &self.store.name)
            .field("key", &self.key)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl Download<'_> {
    /// The next chunk, or `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, ActionError> {
        match self.body.try_next().await {
            Ok(Some(c)) => {
                self.read += c.len() as u64;
                Ok(Some(c))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(self.store.clean(ActionError::Retryable(format!(
                "reading `{}` from object store `{}`: the download broke off after {} bytes: {e}",
                self.key, self.store.name, self.read
            )))),
        }
    }

    /// Bytes read so far.
    pub fn read(&self) -> u64 {
        self.read
    }
}

fn sep(s: &str) -> String {
    if s.is_empty() { String::new() } else { format!(" {s}") }
}

/// The error and its sources, joined (the SDK's top-level message is terse).
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// Runs an S3 call under the attempt's deadline and cancellation token.
pub async fn bounded<T>(
    cancel: &CancellationToken,
    deadline: Instant,
    what: impl FnOnce() -> String,
    fut: impl std::future::Future<Output = Result<T, ActionError>>,
) -> Result<T, ActionError> {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::select! {
        _ = cancel.cancelled() => Err(ActionError::Cancelled),
        r = tokio::time::timeout(left, fut) => match r {
            Ok(r) => r,
            Err(_) => Err(ActionError::Retryable(format!("{}: timed out (step timeout)", what()))),
        },
    }
}
