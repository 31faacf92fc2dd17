//! Who is calling, and may they: bearer tokens (JWT) verified against the issuer's key set, the
//! caller's roles checked against one declarative table per service, in one tower layer in
//! front of every handler. Handlers read the verified [`Caller`] from the request; nothing in a
//! request body says who acts.
//!
//! Roles are plain strings in the token's `roles` claim: people and tools hold the roles of
//! [`roles::HUMAN`]; a service calling a peer holds `service:<name>`. `admin` may call every
//! method (but is still subject to the rules handlers enforce, such as maker-checker).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::codegen::http;
use tonic::{Code, Status};

use crate::config::{AuthMode, Settings};

mod credentials;

/// The roles the suite knows. A table naming anything else fails its test.
pub mod roles {
    pub const ADMIN: &str = "admin";
    /// Runs the floor of operations: sagas, exceptions, routing, sites, channels.
    pub const OPERATOR: &str = "operator";
    /// Takes and amends orders for customers.
    pub const CUSTOMER_SERVICE: &str = "customer-service";
    /// Works the warehouse floor: waves, picks, packs, shipments, receipts.
    pub const WAREHOUSE: &str = "warehouse";
    /// Buys: suppliers, terms, purchase orders.
    pub const BUYER: &str = "buyer";
    /// Approves purchase orders and large refunds, within the token's approval limit.
    pub const APPROVER: &str = "approver";
    /// Money: payments, refunds, the journal, taxes, settlements.
    pub const FINANCE: &str = "finance";
    /// Reads the audit trail and verifies its chain.
    pub const AUDITOR: &str = "auditor";
    /// Systems outside the suite feeding it: sales-channel connectors (orders), carrier
    /// tracking webhooks, payment processor notifications.
    pub const INTEGRATION: &str = "integration";

    pub const ORDER: &str = "service:order";
    pub const INVENTORY: &str = "service:inventory";
    pub const WAREHOUSE_SERVICE: &str = "service:warehouse";
    pub const CARRIER: &str = "service:carrier";
    pub const PROCUREMENT: &str = "service:procurement";
    pub const FINANCE_SERVICE: &str = "service:finance";
    pub const ORCHESTRATOR: &str = "service:orchestrator";

    /// Roles people and tools hold.
    pub const HUMAN: [&str; 9] = [
        ADMIN,
        OPERATOR,
        CUSTOMER_SERVICE,
        WAREHOUSE,
        BUYER,
        APPROVER,
        FINANCE,
        AUDITOR,
        INTEGRATION,
    ];
    /// Identities of the suite's services.
    pub const SERVICES: [&str; 7] = [
        ORDER,
        INVENTORY,
        WAREHOUSE_SERVICE,
        CARRIER,
        PROCUREMENT,
        FINANCE_SERVICE,
        ORCHESTRATOR,
    ];

    /// Every role, people's and services'.
    pub fn all() -> impl Iterator<Item = &'static str> {
        HUMAN.into_iter().chain(SERVICES)
    }

    /// The identity of a service by its short name (`order` → `service:order`).
    pub fn of_service(name: &str) -> Option<&'static str> {
        SERVICES
            .into_iter()
            .find(|r| r.strip_prefix("service:") == Some(name))
    }
}

/// One service's authorization table: each method of its gRPC service and the roles that may
/// call it. A method that is not listed is denied to everyone but `admin`... and to `admin` too:
/// unlisted means nobody.
#[derive(Debug)]
pub struct Policy {
    /// Fully qualified gRPC service, e.g. `erp.order.v1.OrderService`.
    pub service: &'static str,
    pub rules: &'static [(&'static str, &'static [&'static str])],
}

/// The audit service every process serves: auditors (and admins) only.
pub const AUDIT_POLICY: Policy = Policy {
    service: "erp.audit.v1.AuditService",
    rules: &[
        ("ListAuditEvents", &[roles::AUDITOR]),
        ("VerifyAuditChain", &[roles::AUDITOR]),
    ],
};

/// The events service every process serves: operators (and admins) only.
pub const EVENTS_POLICY: Policy = Policy {
    service: "erp.events.v1.EventsService",
    rules: &[
        ("GetEventsStatus", &[roles::OPERATOR, roles::AUDITOR]),
        ("ListDeadLetters", &[roles::OPERATOR, roles::AUDITOR]),
        ("ReplayDeadLetter", &[roles::OPERATOR]),
    ],
};

impl Policy {
    /// The roles allowed to call `method` (the bare name, `CreateOrder`), if it is listed.
    pub fn allowed(&self, method: &str) -> Option<&'static [&'static str]> {
        self.rules
            .iter()
            .find(|(m, _)| *m == method)
            .map(|(_, roles)| *roles)
    }
}

/// What may happen to a request path.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Health checks: no credentials needed (probes carry none).
    Public,
    /// Any authenticated caller (server reflection).
    Authenticated,
    /// Callers holding one of these roles (or `admin`).
    Roles(&'static [&'static str]),
    /// Not in any table.
    Unlisted,
}

/// Decides a request path against the service's table and the runtime's own services.
pub fn decide(policy: &Policy, path: &str) -> Decision {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return Decision::Unlisted;
    };
    if service == "grpc.health.v1.Health" {
        return Decision::Public;
    }
    if service.starts_with("grpc.reflection.") {
        return Decision::Authenticated;
    }
    for p in [policy, &AUDIT_POLICY, &EVENTS_POLICY] {
        if p.service == service {
            return p
                .allowed(method)
                .map_or(Decision::Unlisted, Decision::Roles);
        }
    }
    Decision::Unlisted
}

/// The claims of the suite's bearer tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
    #[serde(default)]
    pub roles: Vec<String>,
    /// The most, in minor units, this principal may approve (purchase orders, refunds,
    /// write-offs above their thresholds). Absent: nothing above the thresholds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_limit_minor: Option<i64>,
}

/// The verified caller of one request, in the request's extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's subject (`alice`, `service:orchestrator`); `anonymous` when auth is off.
    pub subject: String,
    pub roles: Vec<String>,
    pub approval_limit_minor: Option<i64>,
    /// False only when the service runs with `auth.mode = "off"`.
    pub authenticated: bool,
    /// The caller's `x-request-id`, or one made up here; recorded in the audit trail.
    pub request_id: String,
    /// `/package.Service/Method`.
    pub method: String,
}

impl Caller {
    /// The service itself acting on its own schedule (a background job), for audit records and
    /// maker fields: `service:<name>`, doing `what`.
    pub fn system(service: &str, what: &str) -> Self {
        let identity = roles::of_service(service).unwrap_or("service:unknown");
        Self {
            subject: identity.to_owned(),
            roles: vec![identity.to_owned()],
            approval_limit_minor: None,
            authenticated: true,
            request_id: uuid::Uuid::now_v7().to_string(),
            method: what.to_owned(),
        }
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role || r == roles::ADMIN)
    }

    /// The caller of `request`, as the auth layer left it. A request that did not come through
    /// the layer (none do in a running service) is refused rather than trusted.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Self, Status> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no verified caller"))
    }

    /// Whether this caller may approve `amount_minor`: the `approver` role (or admin) and an
    /// approval limit that covers it. Admin without a limit claim approves without limit.
    pub fn may_approve(&self, amount_minor: i64) -> Result<(), String> {
        if !self.authenticated {
            return Ok(());
        }
        if !self.has_role(roles::APPROVER) {
            return Err(format!("{} does not hold the approver role", self.subject));
        }
        let admin = self.roles.iter().any(|r| r == roles::ADMIN);
        match self.approval_limit_minor {
            Some(limit) if amount_minor > limit => Err(format!(
                "{} may approve at most {limit} (minor units), not {amount_minor}",
                self.subject
            )),
            None if !admin => Err(format!(
                "{} has no approval limit in their token",
                self.subject
            )),
            _ => Ok(()),
        }
    }
}

use crate::jwks::KeyStore;
pub use crate::jwks::ensure_local_key;

/// Verifies and mints tokens for one process.
pub struct Authenticator {
    mode: AuthMode,
    issuer: String,
    audience: String,
    keys: Arc<KeyStore>,
    /// With TLS, a token claiming a service's identity must come over a connection whose
    /// client certificate names that service (see [`crate::tls`]).
    bind_service_certs: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("keys", &self.keys.origin())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// From the settings: loads (and in the embedded default first creates) the key set, or
    /// prepares its endpoint (see [`Authenticator::fetch_keys`]).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            mode: settings.auth.mode,
            issuer: settings.auth.issuer.clone(),
            audience: settings.auth.audience.clone(),
            keys: Arc::new(KeyStore::from_settings(settings)?),
            bind_service_certs: settings.tls.enabled(),
        }))
    }

    /// With `auth.jwks_url`: fetches the keys once (before serving) and returns the task that
    /// keeps them fresh; a first fetch that fails is logged and retried by that task, tokens
    /// being refused meanwhile. `None` for a key file.
    pub async fn fetch_keys(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Option<futures::future::BoxFuture<'static, ()>> {
        if !self.keys.is_endpoint() {
            return None;
        }
        if let Err(error) = self.keys.fetch().await {
            tracing::error!(
                error = format!("{error:#}"),
                "auth: no key set yet; every token is refused until a fetch succeeds"
            );
        }
        Some(Box::pin(self.keys.clone().keep_fresh(shutdown)))
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Whether this process can mint tokens (it holds a symmetric key).
    pub fn can_mint(&self) -> bool {
        self.keys.current().signing.is_some()
    }

    /// Signs a token for `subject` with `roles`, valid for `ttl`.
    pub fn mint(
        &self,
        subject: &str,
        roles: &[&str],
        ttl: Duration,
        approval_limit_minor: Option<i64>,
    ) -> anyhow::Result<String> {
        let keys = self.keys.current();
        let Some((kid, key)) = &keys.signing else {
            anyhow::bail!(
                "auth: {} holds no symmetric key to sign with",
                self.keys.origin()
            );
        };
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: subject.to_owned(),
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            approval_limit_minor,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.clone();
        Ok(jsonwebtoken::encode(&header, &claims, key)?)
    }

    /// Verifies a bearer token: signature by a key of the set (the key's own algorithm only),
    /// issuer, audience, expiry (30 s of leeway).
    pub fn verify(&self, token: &str) -> Result<Claims, Status> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Status::unauthenticated(format!("malformed bearer token: {e}")))?;
        let find = |keys: &crate::jwks::KeySet| -> Option<(Algorithm, DecodingKey)> {
            let mut candidates = keys.keys.iter().filter(|(kid, _, _)| match &header.kid {
                Some(wanted) => kid.as_deref() == Some(wanted.as_str()),
                None => true,
            });
            let first = candidates.next()?;
            // Without a key id the set must be unambiguous.
            if header.kid.is_none() && candidates.next().is_some() {
                return None;
            }
            Some((first.1, first.2.clone()))
        };
        let found = find(&self.keys.current()).or_else(|| {
            // Perhaps the issuer rotated its keys: a changed file is re-read now; an endpoint
            // is fetched in the background, so that a retry a moment later succeeds.
            if self.keys.unknown_key_seen() {
                find(&self.keys.current())
            } else {
                None
            }
        });
        let Some((alg, key)) = found else {
            return Err(Status::unauthenticated(
                "bearer token signed by an unknown key",
            ));
        };
        if header.alg != alg {
            return Err(Status::unauthenticated(format!(
                "bearer token uses {:?}, its key is for {alg:?}",
                header.alg
            )));
        }
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map(|d| d.claims)
            .map_err(|e| Status::unauthenticated(format!("bearer token rejected: {e}")))
    }

    /// Authenticates and authorizes one request: the caller to put in its extensions, or the
    /// status to answer with.
    pub fn admit(
        &self,
        policy: &Policy,
        path: &str,
        headers: &http::HeaderMap,
        peer_certs: Option<&[rustls_pki_types::CertificateDer<'static>]>,
    ) -> Result<Option<Caller>, Status> {
        let decision = decide(policy, path);
        let request_id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 100)
            .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
        if self.mode == AuthMode::Off {
            return Ok(Some(Caller {
                subject: "anonymous".into(),
                roles: vec![roles::ADMIN.into()],
                approval_limit_minor: None,
                authenticated: false,
                request_id,
                method: path.to_owned(),
            }));
        }
        if decision == Decision::Public {
            return Ok(None);
        }
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                Status::unauthenticated(
                    "missing `authorization: Bearer <token>` (mint one with `erp token --role ...`)",
                )
            })?;
        let claims = self.verify(token.trim())?;
        if self.bind_service_certs {
            for role in claims.roles.iter().filter(|r| r.starts_with("service:")) {
                let name = crate::tls::service_dns_name(role.trim_start_matches("service:"));
                let proven = peer_certs
                    .and_then(|certs| certs.first())
                    .is_some_and(|leaf| crate::tls::certificate_names(leaf, &name));
                if !proven {
                    return Err(Status::unauthenticated(format!(
                        "a token for {role} is only accepted with that service's client certificate ({name})"
                    )));
                }
            }
        }
        let caller = Caller {
            subject: claims.sub,
            roles: claims.roles,
            approval_limit_minor: claims.approval_limit_minor,
            authenticated: true,
            request_id,
            method: path.to_owned(),
        };
        match decision {
            Decision::Public | Decision::Authenticated => Ok(Some(caller)),
            Decision::Roles(allowed) => {
                if allowed.iter().any(|r| caller.has_role(r)) {
                    Ok(Some(caller))
                } else {
                    Err(Status::permission_denied(format!(
                        "{path} needs one of the roles [{}]; {} holds [{}]",
                        allowed.join(", "),
                        caller.subject,
                        caller.roles.join(", ")
                    )))
                }
            }
            Decision::Unlisted => Err(Status::permission_denied(format!(
                "{path} is not in this service's authorization table"
            ))),
        }
    }
}

/// The tower layer that runs [`Authenticator::admit`] in front of every handler.
#[derive(Clone)]
pub struct AuthLayer {
    pub auth: Arc<Authenticator>,
    pub policy: &'static Policy,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorized {
            inner,
            auth: self.auth.clone(),
            policy: self.policy,
        }
    }
}

#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    auth: Arc<Authenticator>,
    policy: &'static Policy,
}

impl<S, B> tower::Service<http::Request<B>> for Authorized<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        futures::future::Either<S::Future, std::future::Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let certs = request
            .extensions()
            .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
            .and_then(tonic::transport::server::TlsConnectInfo::peer_certs);
        match self.auth.admit(
            self.policy,
            &path,
            request.headers(),
            certs.as_deref().map(Vec::as_slice),
        ) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                futures::future::Either::Left(self.inner.call(request))
            }
            Err(status) => {
                if status.code() == Code::PermissionDenied {
                    tracing::warn!(method = %path, message = status.message(), "permission denied");
                }
                futures::future::Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

pub use credentials::{Credentials, PeerChannel};

/// Roles of a test or tool token by name, checked against the known roles.
pub fn parse_roles(list: &[String]) -> anyhow::Result<Vec<&'static str>> {
    let known: HashMap<&str, &'static str> = roles::all().map(|r| (r, r)).collect();
    list.iter()
        .map(|r| {
            known.get(r.as_str()).copied().ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown role {r:?}; known: {}",
                    roles::all().collect::<Vec<_>>().join(", ")
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use std::path::Path;

    fn settings(dir: &Path) -> Settings {
        let mut env = HashMap::new();
        env.insert("ERP__DATA_DIR".to_owned(), dir.display().to_string());
        Settings::load_with(None, Some(env)).expect("valid settings")
    }

    const POLICY: Policy = Policy {
        service: "erp.test.v1.TestService",
        rules: &[
            ("Refund", &[roles::FINANCE]),
            ("Read", &[roles::OPERATOR, roles::FINANCE]),
        ],
    };

    fn headers(token: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(t) = token {
            h.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(&format!("Bearer {t}")).expect("header"),
            );
        }
        h
    }

    #[test]
    fn tokens_are_verified_and_roles_checked() {
        let dir = std::env::temp_dir().join(format!("erp-auth-{}", uuid::Uuid::now_v7()));
        let auth = Authenticator::from_settings(&settings(&dir)).expect("keys");
        let hour = Duration::from_secs(3600);
        let finance = auth
            .mint("fin", &[roles::FINANCE], hour, None)
            .expect("minted");
        let operator = auth
            .mint("op", &[roles::OPERATOR], hour, None)
            .expect("minted");
        let path = "/erp.test.v1.TestService/Refund";

        let caller = auth
            .admit(&POLICY, path, &headers(Some(&finance)), None)
            .expect("finance may refund")
            .expect("a caller");
        assert_eq!(caller.subject, "fin");
        assert!(caller.authenticated);

        let denied = auth
            .admit(&POLICY, path, &headers(Some(&operator)), None)
            .expect_err("an operator may not refund");
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert!(denied.message().contains("finance"), "{}", denied.message());

        let missing = auth.admit(&POLICY, path, &headers(None), None).unwrap_err();
        assert_eq!(missing.code(), Code::Unauthenticated);

        // Unlisted methods are denied even to admin.
        let admin = auth
            .mint("root", &[roles::ADMIN], hour, None)
            .expect("minted");
        let unlisted = auth
            .admit(
                &POLICY,
                "/erp.test.v1.TestService/Other",
                &headers(Some(&admin)),
                None,
            )
            .unwrap_err();
        assert_eq!(unlisted.code(), Code::PermissionDenied);
        // Health needs nothing.
        assert!(
            auth.admit(
                &POLICY,
                "/grpc.health.v1.Health/Check",
                &headers(None),
                None
            )
            .expect("public")
            .is_none()
        );
    }

    #[test]
    fn forged_expired_and_foreign_tokens_are_refused() {
        let dir = std::env::temp_dir().join(format!("erp-auth-{}", uuid::Uuid::now_v7()));
        let auth = Authenticator::from_settings(&settings(&dir)).expect("keys");
        let other_dir = std::env::temp_dir().join(format!("erp-auth-{}", uuid::Uuid::now_v7()));
        let other = Authenticator::from_settings(&settings(&other_dir)).expect("keys");
        let path = "/erp.test.v1.TestService/Refund";

        // Signed by another key set (its kid is unknown here).
        let foreign = other
            .mint("fin", &[roles::FINANCE], Duration::from_secs(60), None)
            .expect("minted");
        let e = auth
            .admit(&POLICY, path, &headers(Some(&foreign)), None)
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

        // Expired beyond the leeway.
        let keys = auth.keys.current();
        let (kid, key) = keys.signing.as_ref().expect("signing key");
        let now = jsonwebtoken::get_current_timestamp();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.clone();
        let stale = Claims {
            iss: "erp-local".into(),
            aud: "erp".into(),
            sub: "fin".into(),
            iat: now - 7200,
            exp: now - 3600,
            roles: vec![roles::FINANCE.into()],
            approval_limit_minor: None,
        };
        let expired = jsonwebtoken::encode(&header, &stale, key).expect("encoded");
        let e = auth
            .admit(&POLICY, path, &headers(Some(&expired)), None)
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(e.message().contains("xpired"), "{}", e.message());

        // Another audience.
        let wrong_aud = Claims {
            aud: "someone-else".into(),
            exp: now + 600,
            ..stale.clone()
        };
        let token = jsonwebtoken::encode(&header, &wrong_aud, key).expect("encoded");
        assert_eq!(
            auth.admit(&POLICY, path, &headers(Some(&token)), None)
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );

        // A tampered payload (roles widened) fails the signature.
        let good = auth
            .mint("op", &[roles::OPERATOR], Duration::from_secs(60), None)
            .expect("minted");
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let widened = Claims {
            roles: vec![roles::FINANCE.into()],
            sub: "op".into(),
            exp: now + 600,
            ..stale
        };
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&widened).expect("json"));
        let tampered = parts.join(".");
        assert_eq!(
            auth.admit(&POLICY, path, &headers(Some(&tampered)), None)
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );
        // `alg: none` is never accepted.
        let none = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            parts[1]
        );
        assert_eq!(
            auth.admit(&POLICY, path, &headers(Some(&none)), None)
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );
    }

    #[test]
    fn approval_limits() {
        let caller = |roles: &[&str], limit| Caller {
            subject: "a".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            approval_limit_minor: limit,
            authenticated: true,
            request_id: String::new(),
            method: String::new(),
        };
        assert!(
            caller(&[roles::APPROVER], Some(100))
                .may_approve(100)
                .is_ok()
        );
        assert!(
            caller(&[roles::APPROVER], Some(100))
                .may_approve(101)
                .is_err()
        );
        assert!(caller(&[roles::APPROVER], None).may_approve(1).is_err());
        assert!(caller(&[roles::BUYER], Some(1000)).may_approve(1).is_err());
        assert!(caller(&[roles::ADMIN], None).may_approve(i64::MAX).is_ok());
    }

    #[test]
    fn local_key_is_created_once() {
        let dir = std::env::temp_dir().join(format!("erp-auth-{}", uuid::Uuid::now_v7()));
        let path = dir.join("auth").join("jwks.json");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || ensure_local_key(&p))
            })
            .collect();
        for h in handles {
            h.join().expect("thread").expect("key ensured");
        }
        let first = std::fs::read_to_string(&path).expect("written");
        ensure_local_key(&path).expect("idempotent");
        assert_eq!(first, std::fs::read_to_string(&path).expect("still there"));
        let leftovers = std::fs::read_dir(path.parent().expect("dir"))
            .expect("dir")
            .count();
        assert_eq!(leftovers, 1, "temporary files removed");
    }
}
