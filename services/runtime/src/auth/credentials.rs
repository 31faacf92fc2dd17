//! Where a service's (or a tool's) outgoing calls get their bearer token: none, minted from
//! the key set, or read from a file a platform rotates; and the channel type that presents it.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tonic::Status;
use tonic::codegen::http;

use super::{Authenticator, roles};
use crate::config::{AuthMode, Settings};

/// Where a service's outgoing calls get their bearer token.
#[derive(Clone)]
pub struct Credentials(Arc<CredentialSource>);

enum CredentialSource {
    None,
    /// Minted by this process for its own identity, renewed before expiry.
    Minted {
        auth: Arc<Authenticator>,
        subject: String,
        roles: Vec<String>,
        approval_limit_minor: Option<i64>,
        ttl: Duration,
        cached: RwLock<Option<(http::HeaderValue, Instant)>>,
    },
    /// Read from a file (a mounted, rotated Secret), re-read when it changes.
    File {
        path: PathBuf,
        cached: RwLock<Option<(http::HeaderValue, Option<SystemTime>)>>,
    },
}

impl Credentials {
    /// No token (auth off).
    pub fn none() -> Self {
        Self(Arc::new(CredentialSource::None))
    }

    /// A service's own identity towards its peers: minted with `auth` (the key set the service
    /// already loaded to verify its callers) when it holds a signing key, else read from
    /// `auth.service_token_file`.
    pub fn for_service(
        settings: &Settings,
        auth: &Arc<Authenticator>,
        service: &str,
    ) -> anyhow::Result<Self> {
        if settings.auth.mode == AuthMode::Off {
            return Ok(Self::none());
        }
        if !settings.auth.service_token_file.is_empty() {
            return Ok(Self(Arc::new(CredentialSource::File {
                path: PathBuf::from(&settings.auth.service_token_file),
                cached: RwLock::new(None),
            })));
        }
        if !auth.can_mint() {
            anyhow::bail!(
                "auth: {service} has no identity towards its peers: set auth.service_token_file, \
                 or give it a JWKS with a signing key"
            );
        }
        let role = roles::of_service(service)
            .ok_or_else(|| anyhow::anyhow!("auth: unknown service {service}"))?;
        Ok(Self::minted(
            auth.clone(),
            role,
            &[role],
            Duration::from_secs(settings.auth.service_token_ttl_s.max(60)),
            None,
        ))
    }

    /// Tokens minted by `auth` for `subject` with `roles` (tools and tests).
    pub fn minted(
        auth: Arc<Authenticator>,
        subject: &str,
        roles: &[&str],
        ttl: Duration,
        approval_limit_minor: Option<i64>,
    ) -> Self {
        Self(Arc::new(CredentialSource::Minted {
            auth,
            subject: subject.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            approval_limit_minor,
            ttl,
            cached: RwLock::new(None),
        }))
    }

    /// The `authorization` header value for the next call, if any.
    pub fn header(&self) -> Result<Option<http::HeaderValue>, Status> {
        match &*self.0 {
            CredentialSource::None => Ok(None),
            CredentialSource::Minted {
                auth,
                subject,
                roles,
                approval_limit_minor,
                ttl,
                cached,
            } => {
                // Renewed once a third of its life is left.
                if let Ok(c) = cached.read()
                    && let Some((value, renew_at)) = &*c
                    && Instant::now() < *renew_at
                {
                    return Ok(Some(value.clone()));
                }
                let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
                let token = auth
                    .mint(subject, &roles, *ttl, *approval_limit_minor)
                    .map_err(|e| Status::unauthenticated(e.to_string()))?;
                let value = bearer(&token)?;
                if let Ok(mut c) = cached.write() {
                    *c = Some((value.clone(), Instant::now() + *ttl * 2 / 3));
                }
                Ok(Some(value))
            }
            CredentialSource::File { path, cached } => {
                let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                if let Ok(c) = cached.read()
                    && let Some((value, seen)) = &*c
                    && *seen == mtime
                {
                    return Ok(Some(value.clone()));
                }
                let token = std::fs::read_to_string(path).map_err(|e| {
                    Status::unauthenticated(format!(
                        "cannot read the service token {}: {e}",
                        path.display()
                    ))
                })?;
                let value = bearer(token.trim())?;
                if let Ok(mut c) = cached.write() {
                    *c = Some((value.clone(), mtime));
                }
                Ok(Some(value))
            }
        }
    }
}

fn bearer(token: &str) -> Result<http::HeaderValue, Status> {
    let mut value = http::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| Status::unauthenticated("the token is not a valid header value"))?;
    value.set_sensitive(true);
    Ok(value)
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = self.header()? {
            let value = tonic::metadata::MetadataValue::try_from(value.as_bytes())
                .map_err(|_| Status::unauthenticated("the token is not a valid header value"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// A channel to a peer that presents this service's credentials on every call.
pub type PeerChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Credentials>;
