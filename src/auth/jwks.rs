//! The trusted key set and the JWKS client that keeps it current.
//!
//! - The first fetch happens at startup; until it succeeds `/readyz` is 503.
//! - The JWKS is refetched every `auth.jwks_refresh`, whatever its cache
//!   headers say; a failed refresh keeps the last good set.
//! - An unknown `kid` triggers one refetch, single-flight (concurrent requests
//!   wait for the same fetch), at most once per `jwks_min_refresh_interval`;
//!   in between, unknown `kid`s are refused without a network call.
//! - Keys removed from the JWKS stop being trusted at the next successful
//!   fetch.
//! - When refreshes keep failing, the last good set serves for at most
//!   `auth.jwks_max_stale`; past it, tokens are refused with 503
//!   `jwks_unavailable` and `/readyz` fails, until a fetch succeeds.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;

use super::keys::{parse_jwks, KeySet, VerifyKey};
use crate::client::JwksConnector;

/// A JWKS larger than this is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// A whole JWKS fetch, connect to last byte, must finish within this.
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Fetches a JWKS over HTTP(S) with the gateway's trust roots.
#[derive(Debug, Clone)]
pub struct JwksFetcher {
    uri: Uri,
    client: Client<JwksConnector, Empty<Bytes>>,
}

impl JwksFetcher {
    /// A fetcher for `uri` over `client`.
    pub fn new(uri: Uri, client: Client<JwksConnector, Empty<Bytes>>) -> Self {
        Self { uri, client }
    }

    /// Fetches and parses the JWKS once; also returns the body's SHA-256.
    pub async fn fetch(&self) -> Result<(Vec<VerifyKey>, [u8; 32]), String> {
        let fetch = async {
            let response = self
                .client
                .get(self.uri.clone())
                .await
                .map_err(|e| format!("request failed: {}", crate::client::error_chain(&e)))?;
            if !response.status().is_success() {
                return Err(format!("answered {}", response.status()));
            }
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the body failed: {e}"))?
                .to_bytes();
            let keys = parse_jwks(&body, "the JWKS URL")?;
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
            let mut out = [0u8; 32];
            out.copy_from_slice(digest.as_ref());
            Ok((keys, out))
        };
        tokio::time::timeout(JWKS_FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| format!("no complete answer within {JWKS_FETCH_TIMEOUT:?}"))?
    }
}

/// The keys in use, where they come from, and the refetch bookkeeping.
#[derive(Debug)]
pub struct KeyStore {
    /// Keys that never change: `jwks_file` and `hs256_secret`.
    static_keys: Vec<Arc<VerifyKey>>,
    /// The current set (static keys plus the last good fetch) and its
    /// generation, swapped together so a reader never pairs one set with
    /// another's generation.
    current: RwLock<Arc<(KeySet, u64)>>,
    /// The generation of `current`; it moves only when the fetched JWKS
    /// changes, which voids cached verifications.
    generation: AtomicU64,
    /// SHA-256 of the last fetched JWKS body, to tell a change from a refresh.
    last_body: std::sync::Mutex<Option<[u8; 32]>>,
    /// The JWKS URL, if configured.
    fetcher: Option<JwksFetcher>,
    /// Whether a fetch has succeeded (always true without a URL).
    loaded: AtomicBool,
    /// When the store was made: the origin of `last_fetch_ok_ms`.
    created: Instant,
    /// When a fetch last succeeded, in ms since `created` (0: never).
    last_fetch_ok_ms: AtomicU64,
    /// `auth.jwks_max_stale`: how long the last good fetch may serve.
    max_stale: Duration,
    /// Serializes fetches; holds when an unknown-`kid` refetch last ran.
    refetch: tokio::sync::Mutex<Option<Instant>>,
    /// `auth.jwks_min_refresh_interval`.
    min_refresh_interval: Duration,
    /// `auth.jwks_refresh`.
    refresh_interval: Duration,
    /// Fetch results, for metrics.
    stats: JwksStats,
}

/// Counts of JWKS fetches, for `gateway_jwks_refresh_total`.
#[derive(Debug, Default)]
pub struct JwksStats {
    /// Fetches that returned a usable JWKS (changed or not).
    pub fetch_ok: AtomicU64,
    /// Fetches that failed; the last good keys stayed in use.
    pub fetch_failed: AtomicU64,
}

impl KeyStore {
    /// A store with `static_keys`, fetching from `fetcher` if given.
    pub fn new(
        static_keys: Vec<VerifyKey>,
        fetcher: Option<JwksFetcher>,
        refresh_interval: Duration,
        min_refresh_interval: Duration,
        max_stale: Duration,
    ) -> Self {
        let static_keys: Vec<_> = static_keys.into_iter().map(Arc::new).collect();
        let current = KeySet::new(static_keys.iter().cloned());
        Self {
            loaded: AtomicBool::new(fetcher.is_none()),
            created: Instant::now(),
            last_fetch_ok_ms: AtomicU64::new(0),
            max_stale,
            static_keys,
            current: RwLock::new(Arc::new((current, 0))),
            generation: AtomicU64::new(0),
            last_body: std::sync::Mutex::new(None),
            fetcher,
            refetch: tokio::sync::Mutex::new(None),
            min_refresh_interval,
            refresh_interval,
            stats: JwksStats::default(),
        }
    }

    /// Fetch counts so far.
    pub fn stats(&self) -> &JwksStats {
        &self.stats
    }

    /// How many keys are trusted now.
    pub fn key_count(&self) -> usize {
        self.current().0.len()
    }

    /// The current key set with its generation.
    pub fn current(&self) -> Arc<(KeySet, u64)> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether keys are loaded (the first fetch succeeded, if there is a URL).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Whether the keys from the URL are older than `auth.jwks_max_stale`:
    /// every refresh since the last good one failed. Never for static keys.
    pub fn is_stale(&self) -> bool {
        if self.fetcher.is_none() || !self.is_loaded() {
            return false;
        }
        let last_ok = Duration::from_millis(self.last_fetch_ok_ms.load(Ordering::Acquire));
        self.created.elapsed().saturating_sub(last_ok) > self.max_stale
    }

    /// Fetches now and installs the result; the caller holds `refetch`.
    async fn fetch_and_install(&self) -> Result<(), String> {
        let Some(fetcher) = &self.fetcher else {
            return Ok(());
        };
        let (fetched, digest) = match fetcher.fetch().await {
            Ok(fetched) => {
                self.stats.fetch_ok.fetch_add(1, Ordering::Relaxed);
                let now_ms = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
                self.last_fetch_ok_ms.store(now_ms, Ordering::Release);
                fetched
            }
            Err(error) => {
                self.stats.fetch_failed.fetch_add(1, Ordering::Relaxed);
                return Err(error);
            }
        };
        let count = fetched.len();
        let unchanged = {
            let mut last = self.last_body.lock().unwrap_or_else(|p| p.into_inner());
            let unchanged = *last == Some(digest);
            *last = Some(digest);
            unchanged
        };
        if !unchanged {
            let keys = self
                .static_keys
                .iter()
                .cloned()
                .chain(fetched.into_iter().map(Arc::new));
            let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
            *self.current.write().unwrap_or_else(|p| p.into_inner()) =
                Arc::new((KeySet::new(keys), generation));
        }
        if !self.loaded.swap(true, Ordering::AcqRel) {
            tracing::info!(keys = count, "JWKS loaded");
        } else {
            tracing::debug!(keys = count, "JWKS refreshed");
        }
        Ok(())
    }

    /// One fetch now, for startup and `check`.
    pub async fn refresh(&self) -> Result<(), String> {
        let _guard = self.refetch.lock().await;
        self.fetch_and_install().await
    }

    /// Called when a token names an unknown `kid`: refetches at most once per
    /// `jwks_min_refresh_interval`, and requests arriving during a fetch wait
    /// for it instead of starting their own.
    pub async fn refetch_for_unknown_kid(&self) {
        if self.fetcher.is_none() {
            return;
        }
        let seen = self.generation.load(Ordering::Acquire);
        let mut last = self.refetch.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return; // a fetch finished while we waited: use its keys
        }
        if last.is_some_and(|at| at.elapsed() < self.min_refresh_interval) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(error) = self.fetch_and_install().await {
            tracing::warn!(%error, "JWKS refetch for an unknown kid failed; keeping the current keys");
        }
    }

    /// [`KeyStore::refresh_forever`] for keys fetched just now (a reload
    /// fetches a new key store before trusting it): the first refresh is
    /// one `jwks_refresh` from now.
    pub async fn refresh_after_fetch(self: Arc<Self>) {
        if self.fetcher.is_none() {
            return;
        }
        tokio::time::sleep(self.refresh_interval).await;
        self.refresh_forever().await;
    }

    /// Fetches at startup, then every `jwks_refresh`; retries a failed first
    /// fetch every `jwks_min_refresh_interval`. Runs until aborted.
    pub async fn refresh_forever(self: Arc<Self>) {
        if self.fetcher.is_none() {
            return;
        }
        loop {
            let wait = match self.refresh().await {
                Ok(()) => self.refresh_interval,
                Err(error) => {
                    tracing::warn!(%error, "JWKS fetch failed; keeping the last good keys");
                    if self.is_loaded() {
                        self.refresh_interval
                    } else {
                        self.min_refresh_interval.min(self.refresh_interval)
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Reads a static JWKS file.
pub fn load_jwks_file(path: &Path) -> Result<Vec<VerifyKey>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?;
    let keys = parse_jwks(&bytes, &path.display().to_string())?;
    if keys.is_empty() {
        return Err(format!("{} holds no usable key", path.display()));
    }
    Ok(keys)
}
