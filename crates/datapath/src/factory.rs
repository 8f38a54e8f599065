//! [`start`], the one place that maps `Backend.Type` to an implementation: a new backend is a new
//! module and one arm here.

use std::net::{Ipv4Addr, Ipv6Addr};

use weft_core::{BackendKind, NetworkConfig};
use weft_kernel::iface::ExternalInterface;
use weft_kernel::netlink::Netlink;

use crate::backend::{Backend, BackendError};
use crate::hostgw::HostGwBackend;
use crate::udp::UdpBackend;
use crate::vxlan::VxlanBackend;
use crate::wireguard::WireguardBackend;

/// What a backend is built from.
#[derive(Debug, Clone)]
pub struct Setup {
    pub nl: Netlink,
    /// The external interface packets between nodes leave by.
    pub ext: ExternalInterface,
    /// The address other nodes reach this one at (`--public-ip`, else the interface's); None
    /// when the config disables IPv4 (IPv6-only).
    pub public_ip: Option<Ipv4Addr>,
    /// The IPv6 underlay when the config enables IPv6 (dual stack or IPv6-only).
    pub ipv6: Option<Ipv6Underlay>,
    pub config: NetworkConfig,
}

/// A dual-stack node's IPv6 underlay addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Underlay {
    /// The external interface's address, which an IPv6 VTEP sends from.
    pub local: Ipv6Addr,
    /// The address other nodes reach this one at (`--public-ipv6`, else `local`): the lease's
    /// PublicIPv6.
    pub public: Ipv6Addr,
}

/// A [`Setup`] that lacks the underlay address of a family the config enables.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the network config enables IPv4 (EnableIPv4, Network) but this node has no public IPv4 address: give --public-ip, or an --iface that has one")]
    NoPublicIpv4,
    #[error("the network config enables IPv6 (EnableIPv6, IPv6Network) but this node has no IPv6 underlay address: give --public-ipv6, or an --iface that has one")]
    NoPublicIpv6,
}

/// Starts the backend `setup.config` selects: creates or adopts its device. Called before the
/// lease is acquired, since the lease carries the backend's data.
pub async fn start(setup: Setup) -> Result<Box<dyn Backend>, BackendError> {
    let Setup {
        nl,
        ext,
        public_ip,
        ipv6,
        config,
    } = setup;
    let vxlan_v6 = match (config.ipv6, ipv6) {
        (Some(pool), Some(underlay)) => Some(crate::vxlan::Ipv6Side {
            network: pool.network,
            local: underlay.local,
            public: underlay.public,
        }),
        _ => None,
    };
    if config.ipv4.is_some() && public_ip.is_none() {
        return Err(BackendError::new(SetupError::NoPublicIpv4));
    }
    if config.ipv6.is_some() && vxlan_v6.is_none() {
        return Err(BackendError::new(SetupError::NoPublicIpv6));
    }
    let hostgw_v6 = vxlan_v6.map(|side| (side.network, side.public));
    let ipv4 = public_ip.zip(config.network());
    // udp carries IPv4 only; NetworkConfig::parse refuses it without IPv4.
    let ipv4_only =
        || ipv4.ok_or_else(|| BackendError::new(weft_core::ConfigError::Ipv4Required(config.backend.name())));
    Ok(match config.backend {
        BackendKind::Vxlan => Box::new(
            VxlanBackend::start_dual_stack(nl, ext, config.vxlan, ipv4, vxlan_v6)
                .await
                .map_err(BackendError::new)?,
        ),
        BackendKind::HostGw => Box::new(
            HostGwBackend::start_dual_stack(nl, ext, ipv4, hostgw_v6)
                .await
                .map_err(BackendError::new)?,
        ),
        BackendKind::Udp => {
            let (public_ip, network) = ipv4_only()?;
            Box::new(
                UdpBackend::start(nl, ext, public_ip, config.udp, network)
                    .await
                    .map_err(BackendError::new)?,
            )
        }
        BackendKind::Wireguard => {
            let underlay = crate::wireguard::Underlay {
                ipv4: public_ip.filter(|_| config.ipv4.is_some()),
                ipv6: ipv6.filter(|_| config.ipv6.is_some()).map(|u| u.public),
            };
            Box::new(WireguardBackend::start(nl, ext, underlay, config).await?)
        }
    })
}
