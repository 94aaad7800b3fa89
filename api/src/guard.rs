//! What stands between the account and submit endpoints and a flood: attempts per client
//! address and per account, submits per user (GCRA rate limits, governor), and a bound on
//! password hashes at once, so that sign-ups, guesses or submits queue or are refused with
//! 429 instead of taking the memory (argon2id uses 19 MiB a hash), the cores and the
//! workers. Limits are per api process.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::HeaderName;
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::state::AppState;

/// The account and submit endpoints' limits.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Tasks a user may submit per minute (every submit endpoint, replays included).
    pub submits_per_user_per_minute: u32,
    /// Sign-ups and sign-ins per client address per minute.
    pub per_address_per_minute: u32,
    /// Sign-ins per account (email) per minute, from any address.
    pub per_account_per_minute: u32,
    /// Password hashes computed at once.
    pub hashers: usize,
    /// Requests waiting for a hasher; past that, 429.
    pub hash_queue: usize,
    /// The header a trusted proxy puts the client's address in (its last value is used);
    /// `None`: the connection's peer address.
    pub client_ip_header: Option<HeaderName>,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            submits_per_user_per_minute: 120,
            per_address_per_minute: 30,
            per_account_per_minute: 10,
            hashers: std::thread::available_parallelism().map_or(2, usize::from),
            hash_queue: 32,
            client_ip_header: None,
        }
    }
}

/// Keys seen before the limiters forget the idle ones: bounds their memory under a flood
/// of addresses or emails.
const REMEMBERED_KEYS: usize = 100_000;

pub struct Guard {
    submits: DefaultKeyedRateLimiter<uuid::Uuid>,
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    per_account: DefaultKeyedRateLimiter<String>,
    hashers: Arc<Semaphore>,
    waiting: AtomicUsize,
    limits: RequestLimits,
}

/// Holds a hasher until dropped.
pub struct HashPermit {
    _hasher: OwnedSemaphorePermit,
}

impl Guard {
    pub fn new(limits: RequestLimits) -> Self {
        let per_minute = |n: u32| Quota::per_minute(NonZeroU32::new(n.max(1)).expect("n >= 1"));
        Guard {
            submits: DefaultKeyedRateLimiter::keyed(per_minute(limits.submits_per_user_per_minute)),
            per_address: DefaultKeyedRateLimiter::keyed(per_minute(limits.per_address_per_minute)),
            per_account: DefaultKeyedRateLimiter::keyed(per_minute(limits.per_account_per_minute)),
            hashers: Arc::new(Semaphore::new(limits.hashers.max(1))),
            waiting: AtomicUsize::new(0),
            limits,
        }
    }

    /// One submit by `user`: refused past the user's limit.
    pub fn submit_by(&self, user: uuid::Uuid) -> Result<(), ApiError> {
        forget_idle(&self.submits);
        self.submits
            .check_key(&user)
            .map_err(|not_until| limited("too_many_submits", "submits by you", not_until))
    }

    /// One attempt from `address`: refused past the address's limit.
    pub fn attempt_from(&self, address: IpAddr) -> Result<(), ApiError> {
        forget_idle(&self.per_address);
        self.per_address.check_key(&address).map_err(|not_until| {
            limited("too_many_attempts_address", "from your address", not_until)
        })
    }

    /// One sign-in to `email`: refused past the account's limit, whoever asks.
    pub fn attempt_on(&self, email: &str) -> Result<(), ApiError> {
        forget_idle(&self.per_account);
        self.per_account
            .check_key(&email.to_lowercase())
            .map_err(|not_until| limited("too_many_attempts_account", "on this account", not_until))
    }

    /// Waits for a hasher, or refuses when too many requests wait already.
    pub async fn hasher(&self) -> Result<HashPermit, ApiError> {
        if let Ok(permit) = self.hashers.clone().try_acquire_owned() {
            return Ok(HashPermit { _hasher: permit });
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.limits.hash_queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::Limited {
                code: "auth_busy",
                message: "too many sign-ins and sign-ups at once; try again in a second".into(),
                retry_after: Duration::from_secs(1),
            });
        }
        let permit = self.hashers.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        Ok(HashPermit {
            _hasher: permit.expect("the hashers' semaphore is never closed"),
        })
    }
}

fn forget_idle<K: std::hash::Hash + Eq + Clone>(limiter: &DefaultKeyedRateLimiter<K>) {
    if limiter.len() > REMEMBERED_KEYS {
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }
}

fn limited(
    code: &'static str,
    whose: &str,
    not_until: governor::NotUntil<<DefaultClock as Clock>::Instant>,
) -> ApiError {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    let secs = wait.as_secs() + 1;
    ApiError::Limited {
        code,
        message: format!("too many attempts {whose}; try again in {secs} s"),
        retry_after: Duration::from_secs(secs),
    }
}

/// The client's address: the connection's peer, or the last value of the trusted proxy's
/// header when one is configured.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(name) = &state.guard.limits.client_ip_header {
            let forwarded = parts
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|v| v.trim().parse::<IpAddr>().ok())
                .next_back();
            return forwarded.map(ClientIp).ok_or(ApiError::bad_request(
                "invalid_client_address",
                format!(
                    "this server takes the client's address from the {name} header its proxy \
                     writes, and the request has none: reach it through that proxy"
                ),
            ));
        }
        let peer = parts.extensions.get::<PeerAddr>().map(|p| p.0.ip());
        // A router served without `server::run` (tests calling it directly) has no peer.
        Ok(ClientIp(peer.unwrap_or(IpAddr::from([127, 0, 0, 1]))))
    }
}

/// The connection's remote address, put on each request by `server::run`.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(hashers: usize, hash_queue: usize) -> Guard {
        Guard::new(RequestLimits {
            hashers,
            hash_queue,
            ..RequestLimits::default()
        })
    }

    fn code(error: ApiError) -> &'static str {
        error.code()
    }

    #[tokio::test]
    async fn a_hash_waits_for_a_hasher_while_the_queue_has_room_and_is_refused_past_it() {
        let guard = Arc::new(guard(1, 1));
        let busy = guard.hasher().await.unwrap();
        let waiting = tokio::spawn({
            let guard = guard.clone();
            async move { guard.hasher().await.map(|_| ()) }
        });
        while guard.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let refused = guard.hasher().await.err().expect("the queue is full");
        assert_eq!(code(refused), "auth_busy");
        drop(busy);
        waiting
            .await
            .unwrap()
            .expect("the waiting hash gets the hasher");
        assert_eq!(guard.waiting.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn attempts_past_the_limit_are_refused_per_key() {
        let guard = Guard::new(RequestLimits {
            per_address_per_minute: 2,
            per_account_per_minute: 1,
            ..RequestLimits::default()
        });
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert!(guard.attempt_from(a).is_ok() && guard.attempt_from(a).is_ok());
        let refused = guard.attempt_from(a).unwrap_err();
        assert_eq!(refused.code(), "too_many_attempts_address");
        assert!(
            matches!(refused, ApiError::Limited { retry_after, .. } if retry_after.as_secs() >= 1)
        );
        assert!(guard.attempt_from(b).is_ok());
        assert!(guard.attempt_on("Ada@example.com").is_ok());
        let refused = guard.attempt_on("ada@EXAMPLE.com").unwrap_err();
        assert_eq!(refused.code(), "too_many_attempts_account");
    }
}
