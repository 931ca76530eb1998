//! An S3-compatible endpoint in this process: s3s-fs (crates.io, 0.14.1) as a library,
//! served over HTTP/1 by hyper on a free loopback port, with random SigV4 credentials.
//!
//! It needs no installed program (`drover demo` runs on a machine that has nothing but
//! the PostgreSQL binaries) and it checks what a real endpoint checks: signatures, and
//! the checksums of uploads. Objects are plain files under [`S3Fs::data_dir`] (`DIR/BUCKET/KEY`,
//! `LastModified` is the file's mtime), so the lab seeds and ages them on disk.
//!
//! The server runs on a runtime of its own (like [`crate::K8sSim`]); dropping it stops
//! the runtime and removes the folder.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tempfile::TempDir;

use crate::postgres::LabError;

/// An in-process S3 endpoint on `127.0.0.1`. See the module documentation.
pub struct S3Fs {
    dir: TempDir,
    port: u16,
    access_key: String,
    secret_key: String,
    rt: Option<tokio::runtime::Runtime>,
}

impl fmt::Debug for S3Fs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Fs")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .field("keys", &"[redacted]")
            .finish_non_exhaustive()
    }
}

fn random_hex(n: usize) -> Result<String, LabError> {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl S3Fs {
    /// Starts an endpoint with these (empty) buckets, in a new temporary folder.
    pub fn start(buckets: &[&str]) -> Result<Self, LabError> {
        let dir = tempfile::Builder::new().prefix("drover-s3fs-").tempdir()?;
        let data = dir.path().join("data");
        for b in buckets {
            std::fs::create_dir_all(data.join(b))?;
        }
        let access_key = format!("LABKEY{}", random_hex(7)?.to_uppercase());
        let secret_key = format!("labsecret{}", random_hex(16)?);
        let fs = s3s_fs::FileSystem::new(&data).map_err(|e| LabError::Setup(format!("s3s-fs: {e:?}")))?;
        let service = {
            let mut b = S3ServiceBuilder::new(fs);
            b.set_auth(SimpleAuth::from_single(access_key.clone(), secret_key.clone()));
            b.build()
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lab-s3fs")
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(S3Fs {
            dir,
            port,
            access_key,
            secret_key,
            rt: Some(rt),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The access key id (random per endpoint).
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The secret key (random per endpoint).
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The temporary folder (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the objects are (`DIR/BUCKET/KEY`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Writes an object as its file, dated `age` back.
    pub fn seed(&self, bucket: &str, key: &str, body: &[u8], age: Duration) -> Result<(), LabError> {
        let path = self.data_dir().join(bucket).join(key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, body)?;
        let when = SystemTime::now()
            .checked_sub(age)
            .ok_or_else(|| LabError::Setup(format!("cannot date {key} back by {age:?}")))?;
        std::fs::File::options().write(true).open(&path)?.set_modified(when)?;
        Ok(())
    }
}

impl Drop for S3Fs {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    #[test]
    fn serves_signed_requests_only_and_removes_its_folder() {
        let s3 = S3Fs::start(&["b"]).unwrap_or_else(|e| panic!("{e}"));
        s3.seed("b", "k/x", b"hello", Duration::from_secs(60)).unwrap();
        assert!(!format!("{s3:?}").contains(s3.secret_key()));
        let mut tcp = TcpStream::connect(("127.0.0.1", s3.port())).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let req = format!(
            "GET /b/k/x HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            s3.port()
        );
        tcp.write_all(req.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer);
        // An anonymous read is refused: the endpoint checks credentials.
        assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
        assert!(!answer.contains("hello"), "{answer}");
        let dir = s3.dir().to_owned();
        drop(s3);
        assert!(!dir.exists());
    }
}
