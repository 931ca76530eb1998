//! Who is calling: bearer tokens (stored as SHA-256 hashes in the config, compared in
//! constant time) or a dashboard session cookie, and what their role may do. Deny by
//! default: a route says which role it needs; nothing else gets through.

use std::collections::HashMap;
use std::sync::Mutex;
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

pub struct Auth {
    tokens: Vec<Token>,
    sessions: Mutex<HashMap<String, Session>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
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
        let tokens = tokens
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
            .collect::<Result<_, _>>()?;
        Ok(Auth {
            tokens,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// The caller presenting `token`: its SHA-256 is compared with every configured hash
    /// in constant time.
    pub fn bearer(&self, token: &str) -> Option<Caller> {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut found = None;
        for t in &self.tokens {
            #[allow(deprecated)]
            let same = ring::constant_time::verify_slices_are_equal(digest.as_ref(), &t.hash).is_ok();
            if same && found.is_none() {
                found = Some(Caller {
                    name: t.name.clone(),
                    role: t.role,
                    csrf: None,
                });
            }
        }
        found
    }

    /// Starts a dashboard session for a valid token: (session id, caller).
    pub fn login(&self, token: &str) -> Option<(String, Caller)> {
        let caller = self.bearer(token)?;
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
}
