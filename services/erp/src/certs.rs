//! `erp certs`: a development certificate authority and a certificate per service (and one for
//! tools), for running the suite with mutual TLS on a laptop or in tests. Production takes its
//! certificates from the cluster's issuer (the chart's cert-manager `Certificate`s carry the
//! same names).
//!
//! Each service's certificate is valid for the given host names and for
//! `<service>.service.erp`, the name that proves which service it is
//! (see `erp_runtime::tls`). Files: `ca.pem`, `<name>.pem`, `<name>-key.pem`.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Who gets a certificate: the seven services and `client` (tools, tests, operators' grpcurl).
pub fn holders() -> impl Iterator<Item = &'static str> {
    erp_runtime::config::SERVICES.into_iter().chain(["client"])
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents.as_bytes())?;
    Ok(())
}

/// Writes a fresh CA and a certificate for every holder into `dir`, valid for `hosts` (DNS
/// names or IP addresses). The CA's key is not kept: nothing more can be signed with it.
pub fn generate(dir: &Path, hosts: &[String]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "erp development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    let issuer = Issuer::new(ca_params, ca_key);
    for holder in holders() {
        let mut names = hosts.to_vec();
        if holder != "client" {
            names.push(erp_runtime::tls::service_dns_name(holder));
        }
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("erp {holder}"));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::write(dir.join(format!("{holder}.pem")), cert.pem())?;
        write_private(&dir.join(format!("{holder}-key.pem")), &key.serialize_pem())?;
    }
    Ok(())
}

/// The `ERP__TLS__...` settings that point a process at the files of [`generate`].
pub fn settings_env(dir: &Path) -> Vec<(String, String)> {
    let file = |name: &str| dir.join(name).display().to_string();
    vec![
        ("ERP__TLS__CERT_FILE".into(), file("{service}.pem")),
        ("ERP__TLS__KEY_FILE".into(), file("{service}-key.pem")),
        ("ERP__TLS__CA_FILE".into(), file("ca.pem")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_certificate_names_its_service_and_only_it() {
        let dir = std::env::temp_dir().join(format!("erp-certs-{}", uuid::Uuid::now_v7()));
        generate(&dir, &["127.0.0.1".into(), "localhost".into()]).expect("generated");
        for holder in holders() {
            let pem = std::fs::read(dir.join(format!("{holder}.pem"))).expect("cert");
            let der = erp_runtime::tls::first_certificate(&pem).expect("a PEM certificate");
            for service in erp_runtime::config::SERVICES {
                let name = erp_runtime::tls::service_dns_name(service);
                assert_eq!(
                    erp_runtime::tls::certificate_names(&der, &name),
                    holder == service,
                    "{holder} for {name}"
                );
            }
            assert!(erp_runtime::tls::certificate_names(&der, "localhost"));
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
