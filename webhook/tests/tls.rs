//! The HTTPS server on loopback with a self-minted certificate: clients that trust the CA get
//! answers over TLS 1.2 and 1.3; a rotated certificate is served to new connections, and a
//! client holding the rotation's two-CA bundle trusts both the old and the new one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use common::*;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::registry::Registry;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use switchyard_webhook::certs::{self, Subject};
use switchyard_webhook::http::{App, router};
use switchyard_webhook::metrics::Metrics;

fn client(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Body>
{
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_protocol_versions(versions)
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    // No pooling: every request is a new connection with a new handshake.
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(https)
}

async fn ask(
    c: &Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Body,
    >,
    url: &str,
) -> Result<serde_json::Value, String> {
    let body = serde_json::to_vec(&review_json(
        "CREATE",
        &pn("a", &["198.19.128.0/20"], &[], true),
        None,
    ))
    .unwrap();
    let req = http::Request::post(url).body(Body::from(body)).unwrap();
    let resp = c.request(req).await.map_err(|e| format!("{e:?}"))?;
    let bytes = axum::body::to_bytes(Body::new(resp.into_body()), 1 << 20)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

#[tokio::test]
async fn serves_over_tls_and_rotates_without_losing_trust() {
    switchyard_webhook::install_crypto_provider();
    let subject = Subject {
        dns_names: vec!["switchyard-webhook.switchyard-system.svc".into()],
        ips: vec!["127.0.0.1".parse().unwrap()],
    };
    let first = certs::mint(&subject, Duration::from_secs(600), SystemTime::now()).unwrap();
    let tls = certs::tls_config(&first).await.unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}/validate", listener.local_addr().unwrap());
    let mut registry = Registry::default();
    let app = Arc::new(App::new(
        index(&[]),
        Arc::new(Metrics::register(&mut registry)),
    ));
    let handle = axum_server::Handle::new();
    let server = tokio::spawn(switchyard_webhook::serve_https(
        listener,
        tls.clone(),
        router(app),
        handle.clone(),
    ));

    let v13 = client(&first.ca_pem, &[&rustls::version::TLS13]);
    let v12 = client(&first.ca_pem, &[&rustls::version::TLS12]);
    assert_eq!(ask(&v13, &url).await.unwrap()["response"]["allowed"], true);
    assert_eq!(ask(&v12, &url).await.unwrap()["response"]["allowed"], true);
    let stranger = certs::mint(&subject, Duration::from_secs(600), SystemTime::now()).unwrap();
    assert!(
        ask(&client(&stranger.ca_pem, &[&rustls::version::TLS13]), &url)
            .await
            .is_err(),
        "a client trusting another CA is refused"
    );

    // Rotation: the bundle trusting both is published first, then the new certificate served.
    let next = certs::mint(&subject, Duration::from_secs(600), SystemTime::now()).unwrap();
    let bundle = certs::ca_bundle(&next, Some(&first));
    let both = client(&bundle, &[&rustls::version::TLS13]);
    assert_eq!(ask(&both, &url).await.unwrap()["response"]["allowed"], true);
    tls.reload_from_pem(
        next.cert_pem.clone().into_bytes(),
        next.key_pem.clone().into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(ask(&both, &url).await.unwrap()["response"]["allowed"], true);
    assert!(
        ask(&v13, &url).await.is_err(),
        "the old CA alone no longer verifies"
    );
    assert_eq!(
        ask(&client(&next.ca_pem, &[&rustls::version::TLS13]), &url)
            .await
            .unwrap()["response"]["allowed"],
        true
    );
    handle.shutdown();
    let _ = server.await;
}
