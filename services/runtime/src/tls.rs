//! Transport security between the suite's processes: TLS on every server, and mutual TLS
//! (rustls on ring, through tonic) when servers demand client certificates signed by the
//! suite's CA. Certificates come from files (mounted Secrets, cert-manager); `erp certs` writes
//! a development CA and a certificate per service.
//!
//! A service's certificate names it: besides its host names it carries the DNS name
//! `<service>.service.erp`. A token claiming a service's identity (`service:<name>`) is only
//! accepted over a connection whose client certificate carries that name, so a service token
//! copied off a pod is useless without the pod's key.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::TlsSettings;

/// The DNS name a service's certificate carries to prove which service it is.
pub fn service_dns_name(service: &str) -> String {
    format!("{service}.service.erp")
}

fn read(path: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(Path::new(path))
        .map_err(|e| anyhow::anyhow!("tls: cannot read the {what} {path}: {e}"))
}

/// The server side: this process's certificate, and the CA its callers' certificates must
/// chain to (required or optional as configured). None when TLS is off.
pub fn server_config(settings: &TlsSettings) -> anyhow::Result<Option<ServerTlsConfig>> {
    if !settings.enabled() {
        return Ok(None);
    }
    let identity = Identity::from_pem(
        read(&settings.cert_file, "certificate")?,
        read(&settings.key_file, "private key")?,
    );
    Ok(Some(
        ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(Certificate::from_pem(read(&settings.ca_file, "CA bundle")?))
            .client_auth_optional(!settings.require_client_cert),
    ))
}

/// The client side: trust only the suite's CA, present this process's certificate.
pub fn client_config(settings: &TlsSettings) -> anyhow::Result<Option<ClientTlsConfig>> {
    if !settings.enabled() {
        return Ok(None);
    }
    Ok(Some(
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&settings.ca_file, "CA bundle")?))
            .identity(Identity::from_pem(
                read(&settings.cert_file, "certificate")?,
                read(&settings.key_file, "private key")?,
            )),
    ))
}

/// Whether `der` (a client certificate the TLS handshake already verified against the CA) is
/// valid for `dns_name`.
pub fn certificate_names(der: &[u8], dns_name: &str) -> bool {
    let cert = rustls_pki_types::CertificateDer::from(der);
    let Ok(end_entity) = webpki::EndEntityCert::try_from(&cert) else {
        return false;
    };
    let Ok(name) = rustls_pki_types::ServerName::try_from(dns_name) else {
        return false;
    };
    end_entity.verify_is_valid_for_subject_name(&name).is_ok()
}

/// The DER of the first certificate in a PEM file.
pub fn first_certificate(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .next()
        .and_then(Result::ok)
        .map(|c| c.to_vec())
}
