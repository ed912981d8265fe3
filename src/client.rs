//! The outbound HTTP client's parts, shared by every layer that calls out:
//! the upstream API (`proxy`), the JWKS fetcher (`auth`), the audit shipper
//! (`audit`) and the trace exporter (`telemetry`).
//!
//! They all trust the same roots (webpki plus `upstream.ca_file`) and connect
//! the same way, so the connector is built here, in the foundation, and no
//! layer needs another to reach the network.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::{pem::PemObject, CertificateDer};

/// The connector every outbound client uses: HTTPS through rustls, or plain
/// HTTP (the upstream's TLS settings, shared with the JWKS, audit and trace
/// clients).
pub type JwksConnector = HttpsConnector<HttpConnector>;

/// The TLS client settings for trust roots `roots`: aws-lc-rs, the safe
/// default protocol versions, no client certificate.
pub fn tls_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("aws-lc-rs supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(tls)
}

/// An HTTP(S) connector: HTTP/2 or HTTP/1.1 by ALPN, TCP_NODELAY, a connect
/// timeout.
pub fn connector(tls: Arc<rustls::ClientConfig>, connect_timeout: Duration) -> JwksConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

/// The webpki roots, plus every certificate in `ca_file`.
pub fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: bad certificate: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{} holds no PEM certificate", path.display()));
        }
    }
    Ok(roots)
}

/// Whether a URL's host is a loopback IP literal.
pub fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// `error` and its causes, joined, for one log field.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(err) = cause {
        text.push_str(": ");
        text.push_str(&err.to_string());
        cause = err.source();
    }
    text
}

/// Checks an OTLP endpoint (the config `key`) and derives the URL of one
/// signal by appending `signal_path` (`/v1/logs`, `/v1/traces`), unless the
/// endpoint already ends with it.
pub fn signal_endpoint(raw: &str, signal_path: &str, key: &str) -> Result<http::Uri, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme {:?} is not supported; use http or https",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold credentials".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    if url.scheme() == "http" && !is_loopback_host(&url) {
        tracing::warn!(
            endpoint = raw,
            "{key} is plain http to a non-loopback host: data travels unencrypted"
        );
    }
    let base = raw.trim_end_matches('/');
    let full = if base.ends_with(signal_path) {
        base.to_owned()
    } else {
        format!("{base}{signal_path}")
    };
    full.parse()
        .map_err(|e| format!("{full:?} is not a valid URI: {e}"))
}
