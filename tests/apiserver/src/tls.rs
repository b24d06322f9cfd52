//! HTTPS as a cluster serves it: a CA of the test's own, a serving certificate for the
//! addresses clients dial (and `kubernetes.default.svc`), and a bearer token that every
//! request must carry, as a service account's token is checked by a real API server.
use std::{net::IpAddr, sync::Arc};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    },
    TlsAcceptor,
};

/// What a client needs to trust and authenticate to the server.
#[derive(Clone)]
pub struct Credentials {
    /// The CA certificate (PEM): a kubeconfig's certificate-authority-data, a pod's ca.crt.
    pub ca_pem: String,
    /// The bearer token requests must carry.
    pub token: String,
}

fn error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("test API server TLS: {e}"))
}

/// A fresh CA and a serving certificate for `ip`, and the token.
pub fn generate(ip: IpAddr) -> std::io::Result<(Credentials, TlsAcceptor)> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(error)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "xvs-test-apiserver-ca");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().map_err(error)?;
    let ca = ca_params.self_signed(&ca_key).map_err(error)?;

    let mut params = CertificateParams::new(vec!["kubernetes.default.svc".to_owned(), "localhost".to_owned()]).map_err(error)?;
    params.subject_alt_names.push(SanType::IpAddress(ip));
    params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(error)?;
    let cert = params.signed_by(&key, &ca, &ca_key).map_err(error)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(error)?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec()), CertificateDer::from(ca.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(error)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Unguessable enough for a test, and different per server: a client configured for
    // another server is refused.
    let token = format!("xvs-test-{}", &key.public_key_raw().iter().take(12).map(|b| format!("{b:02x}")).collect::<String>());
    Ok((Credentials { ca_pem: ca.pem(), token }, TlsAcceptor::from(Arc::new(config))))
}
