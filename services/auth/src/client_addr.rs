//! Who is knocking: the client address the login limit counts failures
//! against (docs/protocol.md §1, §2.6).
//!
//! The address is the TCP peer's. Only when the peer is a trusted proxy
//! (`NATTER_TRUSTED_PROXIES`) does `X-Forwarded-For` count, read from the
//! right: each hop a trusted proxy added is skipped, and the first address
//! that is not a trusted proxy is the client. Anyone can write the header,
//! so from an untrusted peer, or past the first untrusted hop, it says
//! nothing. An IPv6 client is counted by its /64, the block one
//! subscriber is given: counting single addresses would give an attacker
//! 2^64 fresh ones.

use crate::AppState;
use crate::error::AuthError;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The client address a login is counted against, as stored: an IPv4
/// address, or an IPv6 /64 (`2001:db8:1:2::/64`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientAddr(pub String);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AuthError> {
        let ConnectInfo(peer) = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .copied()
            .ok_or_else(|| AuthError::Internal(anyhow::anyhow!("no peer address")))?;
        let client = client_ip(peer.ip(), &parts.headers, &state.trusted_proxies);
        Ok(Self(counted_as(client)))
    }
}

/// The client's IP: the peer's, or the one trusted proxies forwarded.
fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(&ip));
    let mut client = peer;
    if !is_trusted(client) {
        return client;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, maybe with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// How an address is counted: IPv4 (also when mapped into IPv6) as
/// itself, IPv6 by its /64.
fn counted_as(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                format!("{}/64", Ipv6Addr::from(segments))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().expect("header"));
        }
        headers
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("cidr")).collect()
    }

    #[test]
    fn the_header_is_ignored_from_an_untrusted_peer() {
        let headers = forwarded(&["198.51.100.7"]);
        assert_eq!(
            client_ip(ip("203.0.113.1"), &headers, &[]),
            ip("203.0.113.1")
        );
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("203.0.113.1"), &headers, &trusted),
            ip("203.0.113.1")
        );
    }

    #[test]
    fn trusted_hops_are_skipped_from_the_right() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client forged the first entry; the ingress appended the
        // address it saw, then an internal proxy appended the ingress's.
        let headers = forwarded(&["1.1.1.1, 198.51.100.7", "10.1.2.3"]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), &headers, &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn an_unreadable_hop_stops_at_the_last_trusted_one() {
        let trusted = nets(&["10.0.0.0/8"]);
        let headers = forwarded(&["garbage, 10.9.9.9"]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), &headers, &trusted),
            ip("10.9.9.9")
        );
        assert_eq!(
            client_ip(ip("10.0.0.5"), &HeaderMap::new(), &trusted),
            ip("10.0.0.5")
        );
        let with_port = forwarded(&["198.51.100.7:4711"]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), &with_port, &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn ipv6_clients_count_by_their_slash_64() {
        assert_eq!(counted_as(ip("192.0.2.1")), "192.0.2.1");
        assert_eq!(counted_as(ip("::ffff:192.0.2.1")), "192.0.2.1");
        assert_eq!(
            counted_as(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            counted_as(ip("2001:db8:1:2::1")),
            counted_as(ip("2001:db8:1:2:ffff::9"))
        );
    }
}
