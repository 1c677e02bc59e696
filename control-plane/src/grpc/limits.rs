//! Request limits applied before any handler runs: a cap on requests in
//! flight across all connections, and a per-address rate limit on the calls
//! that anyone can make without a valid token (connect-code exchange and
//! failed authentications). The per-connection cap and the request timeout
//! are tonic's own (`Server::concurrency_limit_per_connection`, `timeout`).
//!
//! Why the rate limit is per address and only for those calls: a valid token
//! already identifies (and quotas) its caller, while a flood of guesses
//! costs database work (the exchange takes the write lock when a code is
//! found) and must not stall the event commits of every tenant.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// How many unauthenticated or failed calls one address may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRate {
    /// Sustained calls per minute.
    pub per_minute: NonZeroU32,
    /// Calls allowed at once before the sustained rate applies.
    pub burst: NonZeroU32,
}

impl PeerRate {
    /// Parses `off`, `N/m` (per minute) or `N/s` (per second), optionally
    /// with `,burst=B` (default: N, at least 1).
    pub fn parse(value: &str) -> Result<Option<PeerRate>, String> {
        let value = value.trim();
        if value == "off" {
            return Ok(None);
        }
        let bad = || format!("{value:?} is not a rate: use e.g. 30/m, 5/s, 30/m,burst=10, or off");
        let (rate, burst) = match value.split_once(',') {
            Some((rate, burst)) => (rate, Some(burst.strip_prefix("burst=").ok_or_else(bad)?)),
            None => (value, None),
        };
        let (count, unit) = rate.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per_minute = match unit.trim() {
            "m" | "min" => count,
            "s" => count.checked_mul(60).ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        let per_minute = NonZeroU32::new(per_minute).ok_or_else(bad)?;
        let burst = match burst {
            Some(b) => NonZeroU32::new(b.trim().parse().map_err(|_| bad())?).ok_or_else(bad)?,
            None => NonZeroU32::new(count.max(1)).expect("at least 1"),
        };
        Ok(Some(PeerRate { per_minute, burst }))
    }
}

/// The limits of one server.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Requests being handled at once, across all connections.
    pub max_in_flight: usize,
    /// Requests being handled at once on one connection.
    pub max_per_connection: usize,
    /// How long a handler may take to answer (streams count until their
    /// response starts, not for their whole life).
    pub request_timeout: Duration,
    /// Unauthenticated calls and failed authentications per address;
    /// `None` turns the limit off.
    pub peer_rate: Option<PeerRate>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_in_flight: 2048,
            max_per_connection: 512,
            request_timeout: Duration::from_secs(60),
            peer_rate: Some(PeerRate {
                per_minute: NonZeroU32::new(60).expect("nonzero"),
                burst: NonZeroU32::new(20).expect("nonzero"),
            }),
        }
    }
}

/// Shared by every connection of the server.
pub struct Limits {
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    peers: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl Limits {
    pub fn new(config: &LimitsConfig) -> Limits {
        Limits {
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            max_in_flight: config.max_in_flight,
            peers: config
                .peer_rate
                .map(|rate| RateLimiter::keyed(Quota::per_minute(rate.per_minute).allow_burst(rate.burst))),
        }
    }

    /// A slot for one request, held until its handler has answered.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.in_flight.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "the server is handling its limit of {} requests; retry shortly",
                self.max_in_flight
            ))
        })
    }

    /// Counts one unauthenticated or failed call from `peer`; refuses it
    /// when the address is over its rate.
    pub fn charge(&self, peer: Option<IpAddr>) -> Result<(), Status> {
        let (Some(peers), Some(peer)) = (&self.peers, peer) else {
            return Ok(());
        };
        // Forget idle addresses now and then, so a scan of many addresses
        // cannot grow the map without bound.
        if peers.len() > 10_000 {
            peers.retain_recent();
        }
        peers.check_key(&peer).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            Status::resource_exhausted(format!(
                "too many unauthenticated or failed requests from {peer}; retry in {} s",
                wait.as_secs().max(1)
            ))
        })
    }
}

/// The remote address of a request, over plaintext or TLS.
pub fn peer_ip<B>(request: &http::Request<B>) -> Option<IpAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
        .map(|addr| addr.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(PeerRate::parse("off").unwrap(), None);
        let rate = PeerRate::parse("30/m").unwrap().unwrap();
        assert_eq!((rate.per_minute.get(), rate.burst.get()), (30, 30));
        let rate = PeerRate::parse("5/s,burst=2").unwrap().unwrap();
        assert_eq!((rate.per_minute.get(), rate.burst.get()), (300, 2));
        for bad in ["", "5", "0/m", "5/h", "x/m", "5/m,burst=0", "5/m,b=2"] {
            assert!(PeerRate::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn an_address_over_its_rate_is_refused_and_others_are_not() {
        let limits = Limits::new(&LimitsConfig {
            peer_rate: PeerRate::parse("1/m,burst=3").unwrap(),
            ..LimitsConfig::default()
        });
        let attacker: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            limits.charge(Some(attacker)).unwrap();
        }
        let refused = limits.charge(Some(attacker)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("192.0.2.1"), "{}", refused.message());
        limits.charge(Some(other)).unwrap();
        // Without a known address (e.g. a Unix socket) nothing is counted.
        limits.charge(None).unwrap();
    }

    #[test]
    fn in_flight_requests_are_capped_and_released() {
        let limits = Limits::new(&LimitsConfig {
            max_in_flight: 2,
            ..LimitsConfig::default()
        });
        let a = limits.admit().unwrap();
        let _b = limits.admit().unwrap();
        assert_eq!(limits.admit().unwrap_err().code(), tonic::Code::ResourceExhausted);
        drop(a);
        let _again = limits.admit().unwrap();
    }
}
