//! Who is calling: bearer tokens (stored as SHA-256 hashes in the config, compared in
//! constant time) or a dashboard session cookie, and what their role may do. Deny by
//! default: a route says which role it needs; nothing else gets through. SIGHUP
//! replaces the tokens: a token taken out of the config (or given another role or hash)
//! is refused from then on, and the dashboard logins made with it end.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use drover_model::config::{ApiToken, Role};
use ring::rand::{SecureRandom, SystemRandom};

/// A token of the config, its hash decoded.
struct Token {
    name: String,
    role: Role,
    hash: [u8; 32],
}

/// A dashboard login.
#[derive(Debug, Clone)]
struct Session {
    name: String,
    role: Role,
    /// The hash of the token it was made with: it ends when that token is gone.
    hash: [u8; 32],
    csrf: String,
    until: Instant,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    pub role: Role,
    /// The session's CSRF token, for a caller that came with the dashboard's cookie:
    /// its form posts must carry it.
    pub csrf: Option<String>,
}

/// How long a dashboard login lasts.
const SESSION: Duration = Duration::from_secs(12 * 3600);

/// The tokens and the dashboard's sessions. Lock order: `tokens`, then `sessions`.
pub struct Auth {
    tokens: RwLock<Vec<Token>>,
    sessions: Mutex<HashMap<String, Session>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.tokens().len())
            .finish_non_exhaustive()
    }
}

/// The config's tokens with their hashes decoded; one whose hash is not 64 hex digits
/// is an error.
fn decode(tokens: &[ApiToken]) -> Result<Vec<Token>, String> {
    tokens
        .iter()
        .map(|t| {
            unhex32(&t.sha256)
                .map(|hash| Token {
                    name: t.name.value.clone(),
                    role: t.role,
                    hash,
                })
                .ok_or_else(|| format!("api token `{}`: sha256 must be 64 hex digits", t.name.value))
        })
        .collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Random hex, for session ids and CSRF tokens.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("the OS random number generator");
    drover_engine::evidence::hex(&buf)
}

/// Whether `role` may call a route that needs `needed`: admin everything; operator and
/// auditor what a viewer may, plus their own.
pub fn allows(role: Role, needed: Role) -> bool {
    role == Role::Admin || role == needed || needed == Role::Viewer
}

impl Auth {
    /// The config's tokens; one whose hash is not 64 hex digits is an error.
    pub fn new(tokens: &[ApiToken]) -> Result<Auth, String> {
        Ok(Auth {
            tokens: RwLock::new(decode(tokens)?),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    fn tokens(&self) -> std::sync::RwLockReadGuard<'_, Vec<Token>> {
        self.tokens.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the tokens (SIGHUP): from now on only these get through, and a
    /// dashboard login ends unless the token it was made with is still there with the
    /// same role. Returns how many logins ended.
    pub fn replace(&self, tokens: &[ApiToken]) -> Result<usize, String> {
        let new = decode(tokens)?;
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let before = sessions.len();
        sessions.retain(|_, s| new.iter().any(|t| t.hash == s.hash && t.role == s.role));
        *tokens = new;
        Ok(before - sessions.len())
    }

    /// The caller presenting `token`: its SHA-256 is compared with every configured hash
    /// in constant time.
    pub fn bearer(&self, token: &str) -> Option<Caller> {
        find(&self.tokens(), token).map(|(caller, _)| caller)
    }

    /// Starts a dashboard session for a valid token: (session id, caller).
    pub fn login(&self, token: &str) -> Option<(String, Caller)> {
        // Under the tokens' lock: a reload cannot slip in between the check and the
        // new session (and miss ending it).
        let tokens = self.tokens();
        let (caller, hash) = find(&tokens, token)?;
        let id = random_hex(32);
        let csrf = random_hex(16);
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.until > now);
        sessions.insert(
            id.clone(),
            Session {
                name: caller.name.clone(),
                role: caller.role,
                hash,
                csrf: csrf.clone(),
                until: now + SESSION,
            },
        );
        Some((
            id,
            Caller {
                csrf: Some(csrf),
                ..caller
            },
        ))
    }

    /// The caller of a session cookie.
    pub fn session(&self, id: &str) -> Option<Caller> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let s = sessions.get(id).filter(|s| s.until > Instant::now())?;
        Some(Caller {
            name: s.name.clone(),
            role: s.role,
            csrf: Some(s.csrf.clone()),
        })
    }

    pub fn logout(&self, id: &str) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// The caller presenting `token` and its token's hash: its SHA-256 is compared with
/// every configured hash in constant time.
fn find(tokens: &[Token], token: &str) -> Option<(Caller, [u8; 32])> {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut found = None;
    for t in tokens {
        #[allow(deprecated)]
        let same = ring::constant_time::verify_slices_are_equal(digest.as_ref(), &t.hash).is_ok();
        if same && found.is_none() {
            found = Some((
                Caller {
                    name: t.name.clone(),
                    role: t.role,
                    csrf: None,
                },
                t.hash,
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        assert!(allows(Role::Admin, Role::Operator));
        assert!(allows(Role::Operator, Role::Viewer));
        assert!(allows(Role::Auditor, Role::Auditor));
        assert!(!allows(Role::Operator, Role::Auditor));
        assert!(!allows(Role::Auditor, Role::Operator));
        assert!(!allows(Role::Viewer, Role::Operator));
    }

    fn token(name: &str, role: Role, secret: &str) -> ApiToken {
        let hash = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        ApiToken {
            name: drover_model::Located::new(drover_model::Location::new(1, 1), name.to_owned()),
            role,
            sha256: drover_model::Located::new(
                drover_model::Location::new(1, 1),
                drover_engine::evidence::hex(hash.as_ref()),
            ),
        }
    }

    #[test]
    fn a_reload_revokes_a_removed_token_and_ends_its_logins() {
        let auth = Auth::new(&[
            token("ops", Role::Operator, "ops-secret"),
            token("view", Role::Viewer, "view-secret"),
            token("audit", Role::Auditor, "audit-secret"),
        ])
        .unwrap();
        let (ops_login, _) = auth.login("ops-secret").unwrap();
        let (view_login, _) = auth.login("view-secret").unwrap();
        let (audit_login, _) = auth.login("audit-secret").unwrap();
        assert!(auth.login("nope").is_none());
        // ops is taken out, audit becomes a viewer, view stays as it was.
        let ended = auth
            .replace(&[
                token("view", Role::Viewer, "view-secret"),
                token("audit", Role::Viewer, "audit-secret"),
            ])
            .unwrap();
        assert_eq!(ended, 2);
        assert_eq!(auth.bearer("ops-secret"), None);
        assert_eq!(auth.session(&ops_login), None);
        assert_eq!(auth.session(&audit_login), None, "its role changed");
        assert_eq!(auth.bearer("audit-secret").map(|c| c.role), Some(Role::Viewer));
        assert_eq!(auth.session(&view_login).map(|c| c.name), Some("view".to_owned()));
        // A rotated token: same name and role, another secret.
        auth.replace(&[token("view", Role::Viewer, "view-secret-2")]).unwrap();
        assert_eq!(auth.session(&view_login), None);
        assert_eq!(auth.bearer("view-secret"), None);
        assert_eq!(auth.bearer("view-secret-2").map(|c| c.name), Some("view".to_owned()));
    }

    #[test]
    fn an_expired_login_is_refused() {
        let auth = Auth::new(&[token("ops", Role::Operator, "ops-secret")]).unwrap();
        let (id, _) = auth.login("ops-secret").unwrap();
        assert!(auth.session(&id).is_some());
        let past = Instant::now().checked_sub(Duration::from_secs(1)).unwrap();
        auth.sessions.lock().unwrap().get_mut(&id).unwrap().until = past;
        assert_eq!(auth.session(&id), None);
        assert!(auth.bearer("ops-secret").is_some(), "the token itself does not expire");
    }
}
