//! Connecting to etcd over TLS with a client certificate, and with a username and password.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use common::{EtcdServer, TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use weft_control::etcd::{EtcdOptions, EtcdSubnetManager};
use weft_control::ControlError;
use weft_core::LeaseAttrs;

const CONFIG: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;

fn pki(dir: &Path) -> TlsFiles {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "weft test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |sans: Vec<String>, cn: &str, usage| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![usage];
        (p.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into()], "etcd", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf(vec![], "weft", ExtendedKeyUsagePurpose::ClientAuth);
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
    };
    for (path, pem) in [
        (&files.ca, ca_cert.pem()),
        (&files.server_cert, server_cert),
        (&files.server_key, server_key),
        (&files.client_cert, client_cert),
        (&files.client_key, client_key),
    ] {
        std::fs::write(path, pem).unwrap();
    }
    files
}

#[tokio::test]
async fn tls_with_a_client_certificate() {
    let (etcd, files) = EtcdServer::start_tls(pki);
    let opts = EtcdOptions {
        cafile: Some(files.ca.clone()),
        certfile: Some(files.client_cert.clone()),
        keyfile: Some(files.client_key.clone()),
        ..etcd.options()
    };
    assert!(etcd.url.starts_with("https://"));
    let m = EtcdSubnetManager::connect_with_retry(opts.clone()).await.unwrap();
    let cfg = m.put_config(CONFIG).await.unwrap();
    let attrs = LeaseAttrs::new(Ipv4Addr::new(198, 51, 100, 1), "vxlan", serde_json::json!({"VNI": 1}));
    let lease = m.acquire_lease(&cfg, attrs.clone(), None).await.unwrap();
    assert_eq!(m.list_leases().await.unwrap()[0].attrs, attrs);
    assert_eq!(m.list_leases().await.unwrap()[0].subnet, lease.subnet);

    // Without a client certificate the server refuses us, and we say where we failed.
    let no_cert = EtcdOptions {
        certfile: None,
        keyfile: None,
        dial_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        ..opts.clone()
    };
    let e = EtcdSubnetManager::connect(no_cert).await.unwrap_err();
    assert!(e.to_string().contains(&etcd.url), "{e}");

    // A missing file is named with its flag.
    let missing = EtcdOptions {
        cafile: Some("/nonexistent/ca.pem".into()),
        ..opts
    };
    let e = EtcdSubnetManager::connect_with_retry(missing).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot read the etcd CA file /nonexistent/ca.pem: ")
            && e.to_string().ends_with("check --etcd-cafile"),
        "{e}"
    );
}

#[tokio::test]
async fn username_and_password() {
    let etcd = EtcdServer::start();
    let mut c = etcd.client().await;
    c.user_add("root", "s3cret", None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.auth_enable().await.unwrap();

    let good = EtcdOptions {
        username: Some("root".into()),
        password: Some("s3cret".into()),
        ..etcd.options()
    };
    let m = EtcdSubnetManager::connect(good.clone()).await.unwrap();
    m.put_config(CONFIG).await.unwrap();
    assert!(m.get_config().await.unwrap().is_some());

    let bad = EtcdOptions {
        password: Some("wrong".into()),
        ..good
    };
    // A wrong password never fixes itself: no endless retry, a clear error.
    let e = tokio::time::timeout(Duration::from_secs(10), EtcdSubnetManager::connect_with_retry(bad))
        .await
        .expect("no retry loop on refused credentials")
        .unwrap_err();
    assert!(matches!(e, ControlError::BadOptions(_)), "{e}");
    assert!(e.to_string().contains("refused our credentials"), "{e}");
    assert!(e.to_string().contains("--etcd-username/--etcd-password"), "{e}");
}
