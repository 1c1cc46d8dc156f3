//! Token authentication and per-topic authorization, on all three transports.
//!
//! A complete setup a service can copy:
//!
//! - **Signed tokens: JWTs**, as identity providers issue them, made and checked with the
//!   `jsonwebtoken` crate: HS256 with the server's key, claims `sub` (the user: `A-Z a-z 0-9 _ -`,
//!   1 to 64 bytes), `role` (`viewer` or `publisher`), `exp` (Unix seconds), `iat`, and `iss` /
//!   `aud` naming this service. [`Keys::mint`] makes one, [`Keys::verify`] checks one: the
//!   algorithm (HS256 only: `none` and other algorithms are refused), the signature, the
//!   claims (issuer, audience, every one present), then the expiry (valid while `now < exp`,
//!   no leeway). With an identity provider, only `verify` is needed, with its key (an RSA or
//!   EC public key and `RS256`/`ES256` work the same way with `jsonwebtoken`).
//! - **Authentication** ([`AuthHooks`], `Hooks::authenticate`): the token comes as `?token=`
//!   (the only way for a browser's `WebSocket` and `EventSource`) or `Authorization: Bearer`
//!   (fetch, XHR, servers); if both are present they must be the same token. No token:
//!   401 `unauthorized`. An expired token: 401 `unauthorized` (the client should get a fresh
//!   one and retry). A forged, tampered or malformed token, or an unknown role: 403
//!   `forbidden`. Every refusal happens before a session exists, on every transport.
//! - **Authorization** (`Hooks::authorize`), asked on every subscribe and publish:
//!   anyone authenticated may subscribe to `scores/<anything>` and to their own `user/<id>`;
//!   only role `publisher` may publish, and only to `scores/<anything>`; nobody joins a room by
//!   request (rooms are server-managed). A refusal is an `error` frame with code `forbidden`;
//!   the session stays open.
//! - **Browsers**: the hub's Origin allow-list ([`build_hub`]) refuses pages of other sites
//!   with 403 `origin_not_allowed` (requests without `Origin`, i.e. non-browser clients, are
//!   not affected).
//! - **Session binding**: the transports re-authenticate every SSE command (and long-polling
//!   request) with these same hooks (`Hub::authenticate`), and refuse one that is not from the
//!   session's user: a stolen session token alone drives nothing. So every request carries
//!   the token, not only the one that opens the session.
//!
//! Routes: `/ws` (WebSocket), `/sse` (server-sent events, commands by `POST`), `/poll`
//! (long-polling), `/` (these instructions as text). A small feed publishes to `scores/demo`
//! every two seconds.
//!
//! ```text
//! cargo run --example auth                           # http://127.0.0.1:3004/
//! cargo run --example auth -- --addr 127.0.0.1:0     # any free port
//! HUB_AUTH_KEY=some-long-secret cargo run --example auth
//! ```
//!
//! At start it prints a fresh viewer token and publisher token (valid for an hour) and
//! copy-paste commands for `websocat`/`wscat` and `curl`. Without `HUB_AUTH_KEY` the key is
//! random per run, so tokens die with the process.

use std::fmt;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::routing::get;
use axum::Router;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use livehub::poll::PollService;
use livehub::sse::SseService;
use livehub::ws::WsService;
use livehub::{async_trait, Action, ConnectRequest, Hooks, Hub, Identity, Rejection};
use serde::{Deserialize, Serialize};

/// The address served when `--addr` is not given.
const DEFAULT_ADDR: &str = "127.0.0.1:3004";

/// How long the demo tokens printed at start are valid.
const DEMO_TTL: Duration = Duration::from_secs(3600);

/// How long a shutdown waits for clients to get their last frames.
const GRACE: Duration = Duration::from_secs(5);

/// Longest user id, in bytes.
const MAX_USER_LEN: usize = 64;

/// Longest token accepted, in bytes (anything longer is not one of ours: refuse before
/// decoding).
const MAX_TOKEN_LEN: usize = 1024;

/// Who issues the tokens (`iss`) and whom they are for (`aud`).
pub(crate) const ISSUER: &str = "hub-auth-example";
pub(crate) const AUDIENCE: &str = "hub";

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    /// May subscribe to `scores/*` and `user/<own id>`.
    Viewer,
    /// A viewer that may also publish to `scores/*`.
    Publisher,
}

/// A token's claims, as they travel (JSON in the JWT's payload).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TokenClaims {
    /// The user.
    pub(crate) sub: String,
    /// What the user may do.
    pub(crate) role: Role,
    /// When the token stops being valid, in Unix seconds.
    pub(crate) exp: u64,
    /// When it was issued, in Unix seconds.
    pub(crate) iat: u64,
    /// Who issued it.
    pub(crate) iss: String,
    /// Whom it is for.
    pub(crate) aud: String,
}

/// What a valid token says: kept in the session's [`Identity`] (`Identity::data`), private to
/// the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claims {
    /// The user id (also the session's `user` in presence).
    pub(crate) user: String,
    /// What the user may do.
    pub(crate) role: Role,
    /// When the token stops being valid, in Unix seconds.
    pub(crate) expiry: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Not a JWT of ours: malformed, another algorithm, another issuer or audience, a claim
    /// missing or of the wrong type, a user id outside the rules.
    Malformed,
    /// The signature does not match: forged or tampered with.
    BadSignature,
    /// Signed by us, but past its expiry.
    Expired,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::Malformed => "malformed token",
            TokenError::BadSignature => "bad token signature",
            TokenError::Expired => "token expired",
        })
    }
}

/// The server's signing key and the rules a token must pass. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

impl Keys {
    /// Keys from secret bytes (use at least 32 random bytes).
    pub(crate) fn new(key: impl AsRef<[u8]>) -> Keys {
        let key = key.as_ref();
        // HS256 only: a token that names another algorithm (`none` included) is refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["sub", "exp", "iss", "aud"]);
        // The expiry is checked by `verify` against the time it is given, with no leeway.
        validation.validate_exp = false;
        Keys {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
        }
    }

    /// A token for `user` with `role`, valid until `expiry` (Unix seconds). `None` if the user
    /// id is not 1 to 64 bytes of `A-Z a-z 0-9 _ -`.
    pub(crate) fn mint(&self, user: &str, role: Role, expiry: u64) -> Option<String> {
        if !valid_user(user) {
            return None;
        }
        let claims = TokenClaims {
            sub: user.to_owned(),
            role,
            exp: expiry,
            iat: unix_now(),
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).ok()
    }

    /// Checks a token at time `now` (Unix seconds): algorithm, signature, claims, then the
    /// expiry (a token is valid while `now < exp`).
    pub(crate) fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let data = jsonwebtoken::decode::<TokenClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Malformed,
            })?;
        let claims = data.claims;
        if !valid_user(&claims.sub) {
            return Err(TokenError::Malformed);
        }
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        Ok(Claims {
            user: claims.sub,
            role: claims.role,
            expiry: claims.exp,
        })
    }
}

fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= MAX_USER_LEN
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The current time in Unix seconds.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The hub's hooks: token authentication and the per-topic rules (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct AuthHooks {
    keys: Keys,
}

impl AuthHooks {
    /// Hooks that accept tokens signed with `keys`.
    pub(crate) fn new(keys: Keys) -> AuthHooks {
        AuthHooks { keys }
    }

    /// The request's token: `?token=` or `Authorization: Bearer`, which must agree if both
    /// are given.
    fn token(req: &ConnectRequest) -> Result<String, Rejection> {
        let query = req.query("token").map(|t| t.into_owned());
        let bearer = req.bearer_token().map(str::to_owned);
        match (query, bearer) {
            (None, None) => Err(Rejection::unauthorized(
                "a token is required: ?token=<token> or Authorization: Bearer <token>",
            )),
            (Some(q), Some(b)) if q != b => Err(Rejection::forbidden(
                "two different tokens (query and Authorization header)",
            )),
            (Some(t), _) | (None, Some(t)) => Ok(t),
        }
    }
}

#[async_trait]
impl Hooks for AuthHooks {
    async fn authenticate(&self, req: &ConnectRequest) -> Result<Identity, Rejection> {
        let token = AuthHooks::token(req)?;
        match self.keys.verify(&token, unix_now()) {
            Ok(claims) => Ok(Identity::user(claims.user.as_str()).with_data(claims)),
            Err(e @ TokenError::Expired) => Err(Rejection::unauthorized(e.to_string())),
            Err(e) => Err(Rejection::forbidden(e.to_string())),
        }
    }

    async fn authorize(&self, identity: &Identity, action: Action<'_>) -> bool {
        let Some(claims) = identity.data::<Claims>() else {
            return false;
        };
        let scores = |topic: &str| topic.strip_prefix("scores/").is_some_and(|t| !t.is_empty());
        match action {
            Action::Subscribe(topic) => {
                scores(topic) || topic.strip_prefix("user/") == Some(claims.user.as_str())
            }
            Action::Publish(topic) => claims.role == Role::Publisher && scores(topic),
            // Rooms are server-managed; and anything added to `Action` later is refused.
            _ => false,
        }
    }
}

/// The hub: [`AuthHooks`] with `keys`, browsers admitted only from `origins`.
pub(crate) fn build_hub(keys: Keys, origins: &[String]) -> Hub {
    Hub::builder()
        .hooks(AuthHooks::new(keys))
        .allowed_origins(origins.iter().cloned())
        .history_len(100)
        .build()
}

/// The routes: the three transports, and the instructions at `/`.
pub(crate) fn router(hub: &Hub) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async {
                "hub auth demo\n\n\
                 /ws    WebSocket\n\
                 /sse   server-sent events (commands by POST)\n\
                 /poll  long-polling\n\n\
                 Every request needs a token: ?token=<JWT> or Authorization: Bearer <JWT>.\n\
                 The server's console prints a viewer's and a publisher's token, and commands \
                 to try with websocat, wscat and curl.\n"
            }),
        )
        .route_service("/ws", WsService::new(hub.clone()))
        .route_service("/sse", SseService::new(hub.clone()))
        .route_service("/poll", PollService::new(hub.clone()))
}

/// The key: `HUB_AUTH_KEY`, or 32 random bytes from the OS.
fn load_key() -> Result<Vec<u8>, String> {
    if let Ok(k) = std::env::var("HUB_AUTH_KEY") {
        if k.len() < 16 {
            return Err("HUB_AUTH_KEY must be at least 16 bytes".into());
        }
        return Ok(k.into_bytes());
    }
    let mut key = vec![0u8; 32];
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| format!("no random source for a key ({e}): set HUB_AUTH_KEY"))?;
    Ok(key)
}

/// Parses `--addr <ip:port>` / `--addr=<ip:port>`.
fn parse_addr(args: impl IntoIterator<Item = String>) -> Result<SocketAddr, String> {
    let mut addr = DEFAULT_ADDR.to_owned();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs a value")?,
            other => match other.strip_prefix("--addr=") {
                Some(v) => addr = v.to_owned(),
                None => return Err(format!("unknown argument {other:?}")),
            },
        }
    }
    addr.parse()
        .map_err(|e| format!("bad --addr {addr:?}: {e}"))
}

/// Publishes a tick to `scores/demo` every two seconds, so that subscribers see something.
async fn feed(hub: Hub) {
    let mut clock = tokio::time::interval(Duration::from_secs(2));
    for n in 1u64.. {
        clock.tick().await;
        let _ = hub
            .publish("scores/demo", &serde_json::json!({ "tick": n }))
            .await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let addr = match parse_addr(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("auth: {e}\nusage: auth [--addr <ip:port>]");
            return ExitCode::from(2);
        }
    };
    let keys = match load_key() {
        Ok(k) => Keys::new(&k),
        Err(e) => {
            eprintln!("auth: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("auth: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    let origins = [format!("http://{local}")];
    let hub = build_hub(keys.clone(), &origins);
    tokio::spawn(feed(hub.clone()));

    let expiry = unix_now() + DEMO_TTL.as_secs();
    let (Some(viewer), Some(publisher)) = (
        keys.mint("ana", Role::Viewer, expiry),
        keys.mint("bo", Role::Publisher, expiry),
    ) else {
        eprintln!("auth: could not mint the demo tokens");
        return ExitCode::FAILURE;
    };
    println!(
        "auth demo on http://{local}/ (browsers allowed from {origins:?})

viewer ana:    {viewer}
publisher bo:  {publisher}
(valid for an hour)

WebSocket (websocat or wscat):
  websocat 'ws://{local}/ws?token={viewer}'
  wscat -c ws://{local}/ws -H 'Authorization: Bearer {publisher}'
  then send:  {{\"type\":\"subscribe\",\"topic\":\"scores/demo\",\"id\":1}}
              {{\"type\":\"subscribe\",\"topic\":\"user/ana\",\"id\":2}}
              {{\"type\":\"publish\",\"topic\":\"scores/demo\",\"data\":{{\"goal\":1}},\"id\":3}}
              (a viewer gets `forbidden` for the publish; so does anyone for user/<someone else>)

Server-sent events:
  curl -N 'http://{local}/sse?topic=scores/demo&token={viewer}'
  and with the `session` event's id and token:
  curl -X POST 'http://{local}/sse?session=<id>' -H 'Hub-Session-Token: <token>' \\
       -H 'Authorization: Bearer {viewer}' -d '{{\"type\":\"subscribe\",\"topic\":\"user/ana\",\"id\":1}}'

Long-polling:
  curl -X POST 'http://{local}/poll' -H 'Authorization: Bearer {publisher}'
  curl 'http://{local}/poll?session=<session>&cursor=0' -H 'Authorization: Bearer {publisher}'
  curl -X POST 'http://{local}/poll?session=<session>' -H 'Authorization: Bearer {publisher}' \\
       -d '{{\"type\":\"publish\",\"topic\":\"scores/demo\",\"data\":{{\"goal\":2}},\"id\":1}}'

Refusals: no token 401, expired 401, forged 403, wrong Origin 403 origin_not_allowed."
    );
    let app = router(&hub).into_make_service_with_connect_info::<SocketAddr>();
    let stop = livehub::shutdown_signal(&hub, tokio::signal::ctrl_c(), GRACE);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        eprintln!("auth: server error: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
