//! Where the issuer's verification keys come from: a JWKS file (re-read when it changes, the
//! embedded default and mounted Secrets) or the issuer's JWKS endpoint (fetched before the
//! service serves, every `auth.jwks_refresh_s`, and at once when a token names a key id the set
//! does not hold: the issuer rotated its keys).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use tokio_util::sync::CancellationToken;

use crate::config::{AuthMode, Settings};

/// The keys of one JWKS, and the key this process may sign with (an `oct` key).
#[derive(Default)]
pub(crate) struct KeySet {
    pub keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    pub signing: Option<(Option<String>, EncodingKey)>,
}

fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    if let Some(alg) = jwk.common.key_algorithm {
        return alg.to_string().parse().ok();
    }
    Some(match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P384 => Algorithm::ES384,
            _ => Algorithm::ES256,
        },
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Parses a JWKS document; `origin` (a path or URL) names it in errors.
pub(crate) fn parse(text: &str, origin: &str) -> anyhow::Result<KeySet> {
    let set: JwkSet = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("auth: {origin} is not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    let mut signing = None;
    for jwk in &set.keys {
        let Some(alg) = algorithm_of(jwk) else {
            anyhow::bail!("auth: a key of {origin} has an unsupported type or algorithm");
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| anyhow::anyhow!("auth: a key of {origin} is invalid: {e}"))?;
        if let AlgorithmParameters::OctetKey(p) = &jwk.algorithm
            && signing.is_none()
        {
            let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.value.trim_end_matches('='))
                .map_err(|e| anyhow::anyhow!("auth: oct key of {origin}: {e}"))?;
            let key = EncodingKey::from_secret(&secret)
                .map_err(|e| anyhow::anyhow!("auth: oct key of {origin}: {e}"))?;
            signing = Some((jwk.common.key_id.clone(), key));
        }
        keys.push((jwk.common.key_id.clone(), alg, key));
    }
    if keys.is_empty() {
        anyhow::bail!("auth: {origin} holds no keys");
    }
    Ok(KeySet { keys, signing })
}

fn load_file(path: &Path) -> anyhow::Result<(KeySet, Option<SystemTime>)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("auth: cannot read the JWKS {}: {e}", path.display()))?;
    let keys = parse(&text, &path.display().to_string())?;
    Ok((
        keys,
        std::fs::metadata(path).and_then(|m| m.modified()).ok(),
    ))
}

/// Writes a JWKS with one fresh 256-bit HS256 key at `path` unless a file is already there.
/// Several processes may race here: the file appears atomically, and the losers read it.
pub fn ensure_local_key(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let secret: [u8; 32] = rand::random();
    let jwks = serde_json::json!({
        "keys": [{
            "kty": "oct",
            "kid": format!("local-{}", uuid::Uuid::now_v7().simple()),
            "alg": "HS256",
            "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
        }]
    });
    let tmp = dir.join(format!(".jwks-{}.tmp", uuid::Uuid::now_v7().simple()));
    {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp)?;
        f.write_all(serde_json::to_string_pretty(&jwks)?.as_bytes())?;
        f.sync_all()?;
    }
    // A hard link fails when the target exists: exactly one writer wins.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether keys may be fetched from `url`: over HTTPS, or plain HTTP to this machine only
/// (keys fetched in the clear from elsewhere could be anyone's).
pub fn jwks_url_allowed(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" => match url.host_str() {
            Some("localhost") => true,
            Some(host) => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback()),
            None => false,
        },
        _ => false,
    }
}

/// A JWKS document larger than this is refused (a real one holds a handful of keys).
const MAX_JWKS_BYTES: usize = 1 << 20;

/// How soon after one reload an unknown key id may trigger another.
const RELOAD_AT_MOST_EVERY: Duration = Duration::from_secs(10);

enum Source {
    /// Authentication is off: no keys.
    None,
    File {
        path: PathBuf,
        mtime: Mutex<Option<SystemTime>>,
    },
    Url(Fetcher),
}

struct Fetcher {
    url: String,
    client: reqwest::Client,
    refresh: Duration,
    /// Woken when a token names an unknown key id.
    wanted: tokio::sync::Notify,
}

/// The current key set of one process and where it is refreshed from.
pub(crate) struct KeyStore {
    source: Source,
    current: RwLock<Arc<KeySet>>,
    last_reload: Mutex<Instant>,
}

impl KeyStore {
    /// From the settings: reads (and in the embedded default first creates) the key file, or
    /// prepares the client of the JWKS endpoint (its first fetch is [`KeyStore::fetch`]).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let auth = &settings.auth;
        let (source, keys) = match auth.mode {
            AuthMode::Off => (Source::None, KeySet::default()),
            AuthMode::Jwt if !auth.jwks_url.trim().is_empty() => {
                let url = auth.jwks_url.trim().to_owned();
                if !jwks_url_allowed(&url) {
                    anyhow::bail!(
                        "auth.jwks_url {url}: must be https:// (http:// only to a loopback host)"
                    );
                }
                let mut client = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(10))
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("erp/", env!("CARGO_PKG_VERSION")));
                if !auth.jwks_ca_file.is_empty() {
                    let pem = std::fs::read(&auth.jwks_ca_file).map_err(|e| {
                        anyhow::anyhow!("auth.jwks_ca_file {}: {e}", auth.jwks_ca_file)
                    })?;
                    client = client.tls_built_in_root_certs(false);
                    for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                        anyhow::anyhow!("auth.jwks_ca_file {}: {e}", auth.jwks_ca_file)
                    })? {
                        client = client.add_root_certificate(cert);
                    }
                }
                let fetcher = Fetcher {
                    url,
                    client: client.build()?,
                    refresh: Duration::from_secs(auth.jwks_refresh_s.max(1)),
                    wanted: tokio::sync::Notify::new(),
                };
                (Source::Url(fetcher), KeySet::default())
            }
            AuthMode::Jwt => {
                let path = settings.jwks_path();
                if auth.generate_key {
                    ensure_local_key(&path)?;
                }
                let (keys, mtime) = load_file(&path)?;
                let mtime = Mutex::new(mtime);
                (Source::File { path, mtime }, keys)
            }
        };
        Ok(Self {
            source,
            current: RwLock::new(Arc::new(keys)),
            // The first unknown key may trigger a reload at once.
            last_reload: Mutex::new(
                Instant::now()
                    .checked_sub(RELOAD_AT_MOST_EVERY)
                    .unwrap_or_else(Instant::now),
            ),
        })
    }

    /// Where the keys come from, for messages.
    pub fn origin(&self) -> String {
        match &self.source {
            Source::None => "no key set (auth off)".into(),
            Source::File { path, .. } => path.display().to_string(),
            Source::Url(f) => f.url.clone(),
        }
    }

    /// Whether the keys come from an endpoint (and need [`KeyStore::keep_fresh`]).
    pub fn is_endpoint(&self) -> bool {
        matches!(self.source, Source::Url(_))
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn replace(&self, keys: KeySet) {
        match self.current.write() {
            Ok(mut k) => *k = Arc::new(keys),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(keys),
        }
    }

    /// A token named a key id the set does not hold: re-read the file when it changed, or
    /// wake the fetcher, at most every few seconds. Returns whether the set may have changed
    /// (a file re-read; a fetch happens in the background).
    pub fn unknown_key_seen(&self) -> bool {
        {
            let Ok(mut last) = self.last_reload.lock() else {
                return false;
            };
            if last.elapsed() < RELOAD_AT_MOST_EVERY {
                return false;
            }
            *last = Instant::now();
        }
        match &self.source {
            Source::None => false,
            Source::Url(fetcher) => {
                fetcher.wanted.notify_one();
                false
            }
            Source::File { path, mtime } => {
                let now = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                let Ok(mut seen) = mtime.lock() else {
                    return false;
                };
                if now.is_some() && now == *seen {
                    return false;
                }
                match load_file(path) {
                    Ok((keys, loaded)) => {
                        self.replace(keys);
                        *seen = loaded;
                        tracing::info!(path = %path.display(), "auth: key set reloaded");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "auth: key set not reloaded");
                        false
                    }
                }
            }
        }
    }

    /// Fetches the JWKS endpoint once and installs its keys (a no-op for a key file).
    pub async fn fetch(&self) -> anyhow::Result<()> {
        let Source::Url(fetcher) = &self.source else {
            return Ok(());
        };
        let mut response = fetcher
            .client
            .get(&fetcher.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await?
            .error_for_status()?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                anyhow::bail!(
                    "auth: {} is larger than {MAX_JWKS_BYTES} bytes",
                    fetcher.url
                );
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(body)
            .map_err(|_| anyhow::anyhow!("auth: {} is not UTF-8", fetcher.url))?;
        let keys = parse(&text, &fetcher.url)?;
        let count = keys.keys.len();
        self.replace(keys);
        tracing::info!(url = %fetcher.url, keys = count, "auth: key set fetched");
        Ok(())
    }

    /// For a JWKS endpoint: fetches again every refresh interval, when a token names an
    /// unknown key, and with backoff (1 s doubling to 30 s) after a failure, keeping the last
    /// good keys meanwhile. Returns at once for a key file.
    pub async fn keep_fresh(self: Arc<Self>, shutdown: CancellationToken) {
        let Source::Url(fetcher) = &self.source else {
            return;
        };
        let mut backoff = Duration::from_secs(1);
        let mut failing = self.current().keys.is_empty();
        loop {
            let wait = if failing { backoff } else { fetcher.refresh };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = fetcher.wanted.notified() => {}
            }
            match self.fetch().await {
                Ok(()) => {
                    failing = false;
                    backoff = Duration::from_secs(1);
                }
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        url = %fetcher.url,
                        "auth: key set not fetched"
                    );
                    failing = true;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_over_https_or_from_this_machine_only() {
        for allowed in [
            "https://idp.example/.well-known/jwks.json",
            "https://10.0.0.7:8443/keys",
            "http://127.0.0.1:8080/jwks",
            "http://localhost/jwks",
            "http://[::1]:9000/jwks",
        ] {
            assert!(jwks_url_allowed(allowed), "{allowed}");
        }
        for refused in [
            "http://idp.example/jwks",
            "http://10.0.0.7/jwks",
            "http://localhost.evil.example/jwks",
            "ftp://idp.example/jwks",
            "file:///etc/erp/jwks.json",
            "idp.example/jwks",
            "",
        ] {
            assert!(!jwks_url_allowed(refused), "{refused}");
        }
    }

    #[test]
    fn a_document_without_keys_or_with_an_unknown_key_type_is_refused() {
        assert!(parse(r#"{"keys":[]}"#, "t").is_err());
        assert!(parse("not json", "t").is_err());
        let unknown = r#"{"keys":[{"kty":"oct","alg":"none","k":"AAAA"}]}"#;
        assert!(parse(unknown, "t").is_err());
        let good = r#"{"keys":[{"kty":"oct","kid":"k1","alg":"HS256","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}]}"#;
        let set = parse(good, "t").unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.keys[0].0.as_deref(), Some("k1"));
        assert!(set.signing.is_some());
    }
}
