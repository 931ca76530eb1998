//! The simulator's certificates: a CA generated at start (rcgen) and a server
//! certificate it signs for `127.0.0.1` and `localhost`, served with rustls (ring).
//! A second, unrelated CA exists only so that tests can write a kubeconfig whose CA
//! does not match the server (the client must refuse it).

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::postgres::LabError;

/// The PEM of a CA and the rustls config of a server certificate it issued.
pub(crate) struct Certs {
    pub ca_pem: String,
    pub other_ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

fn err(e: impl std::fmt::Display) -> LabError {
    LabError::Setup(format!("simulator certificates: {e}"))
}

fn ca(name: &str) -> Result<(String, Issuer<'static, KeyPair>), LabError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

pub(crate) fn generate(name: &str) -> Result<Certs, LabError> {
    let (ca_pem, issuer) = ca(&format!("drover-lab {name} CA"))?;
    let (other_ca_pem, _) = ca(&format!("drover-lab {name} unrelated CA"))?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).map_err(err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("drover-lab {name} kube-apiserver"));
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(err)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(err)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Certs {
        ca_pem,
        other_ca_pem,
        server: Arc::new(server),
    })
}
