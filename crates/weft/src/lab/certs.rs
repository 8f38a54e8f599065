//! The lab's PKI: one CA, a server certificate for etcd and a client certificate for weftd and
//! the lab itself, written as PEM files into the lab directory.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};

use super::error::{LabError, Result};

/// Paths of the PEM files etcd and its clients need.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertPaths {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Generates the CA and both leaf certificates; the server's SANs are `server_ips`.
pub fn generate(dir: &Path, server_ips: &[&str]) -> Result<CertPaths> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "weft lab CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |sans: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let sans: Vec<String> = server_ips.iter().map(|s| s.to_string()).collect();
    let (server_cert, server_key) = leaf(sans, "etcd", ExtendedKeyUsagePurpose::ServerAuth)?;
    let (client_cert, client_key) = leaf(Vec::new(), "weft", ExtendedKeyUsagePurpose::ClientAuth)?;

    let paths = CertPaths {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("etcd-server.pem"),
        server_key: dir.join("etcd-server-key.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
    };
    for (path, pem) in [
        (&paths.ca, ca_cert.pem()),
        (&paths.server_cert, server_cert),
        (&paths.server_key, server_key),
        (&paths.client_cert, client_cert),
        (&paths.client_key, client_key),
    ] {
        std::fs::write(path, pem).map_err(|e| LabError::io("writing certificate", path, e))?;
    }
    Ok(paths)
}
