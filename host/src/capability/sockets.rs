//! `wasi:sockets` as Spin grants it: a component may connect TCP to, and exchange UDP
//! datagrams with, the addresses and ports its `allowed_outbound_hosts` grant for the `tcp` and
//! `udp` schemes (`tcp://127.0.0.1:6379`, `udp://10.0.0.0/8:53`, `*://db.internal:5432`);
//! everything else is `access-denied`. A granted name grants the addresses it resolves to at
//! the time of the connection. No component may listen: a TCP bind or listen is refused, and a
//! UDP socket may only bind an ephemeral port (the client side of an exchange).
//!
//! wasmtime-wasi implements the interfaces; this module decides, per instance, what it lets
//! through.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::WasiCtxBuilder;

use mosaic_manifest::allowed_hosts::AllowedHosts;

/// Lets `wasi` use the sockets `allowed` grants, and nothing else.
pub fn configure(wasi: &mut WasiCtxBuilder, component: Arc<str>, allowed: Arc<AllowedHosts>) {
    let (tcp, udp) = (allowed.grants_scheme("tcp"), allowed.grants_scheme("udp"));
    // A component with no socket grant gets no socket at all (and no name lookup, which
    // would let it reach a DNS server).
    wasi.allow_tcp(tcp).allow_udp(udp).allow_ip_name_lookup(tcp || udp);
    if !(tcp || udp) {
        return;
    }
    wasi.socket_addr_check(move |addr, use_| {
        let (component, allowed) = (component.clone(), allowed.clone());
        Box::pin(async move {
            let granted = permits(&allowed, addr, use_).await;
            if !granted && !matches!(use_, SocketAddrUse::UdpReceive) {
                tracing::warn!(
                    component = %component,
                    address = %addr,
                    "a socket was refused: {} {addr} is not in the component's allowed_outbound_hosts",
                    describe(use_)
                );
            }
            granted
        }) as Pin<Box<dyn std::future::Future<Output = bool> + Send + Sync>>
    });
}

async fn permits(allowed: &AllowedHosts, addr: SocketAddr, use_: SocketAddrUse) -> bool {
    match use_ {
        SocketAddrUse::TcpConnect => granted(allowed, "tcp", addr).await,
        SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => granted(allowed, "udp", addr).await,
        // The implicit bind of a connect or a first send: the wildcard address, port 0.
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => is_ephemeral(addr),
        SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
    }
}

/// `0.0.0.0:0` or `[::]:0`: any local address, a port the system picks.
fn is_ephemeral(addr: SocketAddr) -> bool {
    addr.ip().is_unspecified() && addr.port() == 0
}

/// Whether `scheme://addr` is granted: by an address or range, or by a name that resolves to
/// the address now.
async fn granted(allowed: &AllowedHosts, scheme: &str, addr: SocketAddr) -> bool {
    let ip = addr.ip().to_canonical();
    if allowed.allows(scheme, &ip.to_string(), Some(addr.port())) {
        return true;
    }
    for name in allowed.names_for(scheme, addr.port()) {
        if resolves_to(name, addr.port(), ip).await {
            return true;
        }
    }
    false
}

async fn resolves_to(name: &str, port: u16, ip: IpAddr) -> bool {
    match tokio::net::lookup_host((name, port)).await {
        Ok(mut addresses) => addresses.any(|resolved| resolved.ip().to_canonical() == ip),
        Err(_) => false,
    }
}

fn describe(use_: SocketAddrUse) -> &'static str {
    match use_ {
        SocketAddrUse::TcpConnect => "a TCP connection to",
        SocketAddrUse::TcpBind => "a TCP bind of",
        SocketAddrUse::TcpListen => "a TCP listener on",
        SocketAddrUse::TcpAccept => "a TCP connection from",
        SocketAddrUse::UdpBind => "a UDP bind of",
        SocketAddrUse::UdpSend => "a UDP datagram to",
        SocketAddrUse::UdpReceive => "a UDP datagram from",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[tokio::test]
    async fn only_granted_addresses_and_ephemeral_binds_pass() {
        let grants = allowed(&["tcp://127.0.0.1:7000", "udp://10.0.0.0/8:53", "tcp://localhost:7100"]);
        let at = |text: &str| text.parse::<SocketAddr>().unwrap();
        assert!(permits(&grants, at("127.0.0.1:7000"), SocketAddrUse::TcpConnect).await);
        assert!(!permits(&grants, at("127.0.0.1:7001"), SocketAddrUse::TcpConnect).await);
        assert!(!permits(&grants, at("127.0.0.1:7000"), SocketAddrUse::UdpSend).await);
        assert!(permits(&grants, at("10.9.8.7:53"), SocketAddrUse::UdpSend).await);
        assert!(permits(&grants, at("10.9.8.7:53"), SocketAddrUse::UdpReceive).await);
        assert!(
            permits(&grants, at("127.0.0.1:7100"), SocketAddrUse::TcpConnect).await,
            "localhost resolves to it"
        );
        assert!(permits(&grants, at("[::ffff:127.0.0.1]:7000"), SocketAddrUse::TcpConnect).await);
        assert!(permits(&grants, at("0.0.0.0:0"), SocketAddrUse::UdpBind).await);
        assert!(permits(&grants, at("[::]:0"), SocketAddrUse::TcpBind).await);
        assert!(
            !permits(&grants, at("0.0.0.0:7000"), SocketAddrUse::TcpBind).await,
            "no listening"
        );
        assert!(!permits(&grants, at("127.0.0.1:0"), SocketAddrUse::TcpListen).await);
        assert!(!permits(&grants, at("127.0.0.1:7000"), SocketAddrUse::TcpAccept).await);
    }
}
