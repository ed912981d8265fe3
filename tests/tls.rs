//! HTTPS upstreams: trusted through `upstream.ca_file` (with HTTP/2 by ALPN),
//! and refused with 502 when the certificate is not trusted.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

struct Seen {
    version: http::Version,
    authorization: Option<String>,
    host: Option<String>,
}

/// A test CA, and an HTTPS server for `localhost` signed by it.
async fn tls_upstream(dir: &TestDir) -> (u16, std::path::PathBuf, Arc<Mutex<Vec<Seen>>>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca_path = dir.path("test-ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();

    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(leaf.der().to_vec())],
        PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
    )
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let header = |name: &str| {
                            req.headers()
                                .get(name)
                                .map(|v| v.to_str().unwrap().to_owned())
                        };
                        let host =
                            header("host").or_else(|| req.uri().authority().map(|a| a.to_string()));
                        record.lock().unwrap().push(Seen {
                            version: req.version(),
                            authorization: header("authorization"),
                            host,
                        });
                        async {
                            Ok::<_, std::convert::Infallible>(http::Response::new(upstream_body(
                                r#"{"data":{}}"#,
                            )))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, ca_path, seen)
}

#[tokio::test]
async fn https_upstream_through_a_test_ca_uses_http2() {
    let dir = TestDir::new();
    let (port, ca, seen) = tls_upstream(&dir).await;
    let extra = format!("[upstream]\nca_file = {:?}", ca.display().to_string());
    let path = dir.config(&format!("https://localhost:{port}"), &extra);
    let gw = start_gateway_from(dir, &path).await;
    let (parts, body) = send(&client(), get(&gw.url("/api/organization"))).await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].version,
        http::Version::HTTP_2,
        "ALPN should pick h2"
    );
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(&*format!("Bearer {PARTNER_KEY}"))
    );
    assert_eq!(seen[0].host.as_deref(), Some(&*format!("localhost:{port}")));
}

#[tokio::test]
async fn an_untrusted_certificate_is_502_and_nothing_is_sent() {
    let dir = TestDir::new();
    let (port, _ca, seen) = tls_upstream(&dir).await;
    let gw = start_gateway(&format!("https://localhost:{port}"), "").await;
    let (parts, body) = send(&client(), get(&gw.url("/api/organization"))).await;
    assert_gateway_error(&parts, &body, 502, "upstream_unreachable");
    assert!(seen.lock().unwrap().is_empty());
}
