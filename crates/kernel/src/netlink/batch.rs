//! Several independent changes sent together: the route-family messages in one datagram on the
//! route socket, the nexthop messages in one on the nexthop socket. The kernel handles the
//! messages of a datagram in order and acknowledges each, so the n-th answer is the n-th
//! change's. One system call and one round trip for many entries, where one request each costs
//! a round trip each. The changes of one batch must not depend on each other (a route and the
//! nexthop it points at go in different batches, one after the other).

use std::net::IpAddr;

use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::proto::ConnectionHandle;
use rtnetlink::sys::SocketAddr;

use super::{Netlink, NetlinkError, NexthopMessage, NexthopSpec, RouteSpec};

/// One change of a batch: its message, flags, what it is (for an error) and whether "not
/// found" counts as done (a delete).
struct Change<T> {
    msg: T,
    flags: u16,
    op: &'static str,
    delete: bool,
}

/// Where a change's answer comes from, in the order the changes were added.
enum Slot {
    Route(usize),
    Nexthop(usize),
    /// Refused before sending.
    Refused(NetlinkError),
}

/// Changes to send together with [`Netlink::send_batch`]; each method mirrors the `Netlink`
/// method of the same name.
#[derive(Default)]
pub struct Batch {
    routes: Vec<Change<RouteNetlinkMessage>>,
    nexthops: Vec<Change<NexthopMessage>>,
    slots: Vec<Slot>,
}

const SET: u16 = NLM_F_CREATE | NLM_F_REPLACE;

impl Batch {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn route(&mut self, msg: RouteNetlinkMessage, flags: u16, op: &'static str, delete: bool) {
        self.slots.push(Slot::Route(self.routes.len()));
        self.routes.push(Change { msg, flags, op, delete });
    }

    fn nexthop(&mut self, msg: NexthopMessage, flags: u16, op: &'static str, delete: bool) {
        self.slots.push(Slot::Nexthop(self.nexthops.len()));
        self.nexthops.push(Change { msg, flags, op, delete });
    }

    pub fn replace_neighbour(&mut self, index: u32, ip: IpAddr, mac: [u8; 6]) {
        let msg = Netlink::neighbour_message(index, ip, Some(mac));
        self.route(RouteNetlinkMessage::NewNeighbour(msg), SET, "replace neighbour", false);
    }

    pub fn delete_neighbour(&mut self, index: u32, ip: IpAddr) {
        let msg = Netlink::neighbour_message(index, ip, None);
        self.route(RouteNetlinkMessage::DelNeighbour(msg), 0, "delete neighbour", true);
    }

    pub fn replace_fdb(&mut self, index: u32, mac: [u8; 6], dst: IpAddr) {
        let msg = Netlink::fdb_message(index, mac, dst);
        self.route(RouteNetlinkMessage::NewNeighbour(msg), SET, "replace FDB entry", false);
    }

    pub fn delete_fdb(&mut self, index: u32, mac: [u8; 6], dst: IpAddr) {
        let msg = Netlink::fdb_message(index, mac, dst);
        self.route(RouteNetlinkMessage::DelNeighbour(msg), 0, "delete FDB entry", true);
    }

    pub fn replace_route(&mut self, spec: &RouteSpec) {
        match Netlink::route_message(spec, false) {
            Ok(msg) => self.route(RouteNetlinkMessage::NewRoute(msg), SET, "replace route", false),
            Err(e) => self.slots.push(Slot::Refused(e)),
        }
    }

    pub fn delete_route_at_metric(&mut self, spec: &RouteSpec, metric: u32) {
        match Netlink::route_message(spec, true) {
            Ok(mut msg) => {
                if metric != 0 {
                    msg.attributes
                        .push(netlink_packet_route::route::RouteAttribute::Priority(metric));
                }
                self.route(RouteNetlinkMessage::DelRoute(msg), 0, "delete route", true)
            }
            Err(e) => self.slots.push(Slot::Refused(e)),
        }
    }

    pub fn replace_route_via_nexthop(&mut self, dst: IpNet, nexthop: u32) {
        let msg = Netlink::nexthop_route_message(dst, nexthop, false);
        self.route(
            RouteNetlinkMessage::NewRoute(msg),
            SET,
            "replace route via nexthop",
            false,
        );
    }

    pub fn delete_route_via_nexthop(&mut self, dst: IpNet, nexthop: u32, metric: u32) {
        let mut msg = Netlink::nexthop_route_message(dst, nexthop, true);
        if metric != 0 {
            msg.attributes
                .push(netlink_packet_route::route::RouteAttribute::Priority(metric));
        }
        self.route(RouteNetlinkMessage::DelRoute(msg), 0, "delete route via nexthop", true);
    }

    pub fn replace_nexthop(&mut self, spec: &NexthopSpec) {
        self.nexthop(Netlink::nexthop_message(spec), SET, "replace nexthop", false);
    }

    pub fn delete_nexthop(&mut self, id: u32) {
        self.nexthop(Netlink::nexthop_delete_message(id), 0, "delete nexthop", true);
    }
}

/// Sends `changes` in one datagram on `handle` and returns each one's answer, in order.
async fn send_on<T>(handle: &ConnectionHandle<T>, changes: Vec<Change<T>>) -> Vec<Result<(), NetlinkError>>
where
    T: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
{
    if changes.is_empty() {
        return Vec::new();
    }
    let mut about = Vec::with_capacity(changes.len());
    let mut messages = Vec::with_capacity(changes.len());
    for change in changes {
        let mut msg = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(change.msg));
        msg.finalize();
        msg.header.flags = NLM_F_REQUEST | NLM_F_ACK | change.flags;
        messages.push(msg);
        about.push((change.op, change.delete));
    }
    let mut results = Vec::with_capacity(about.len());
    if let Ok(mut replies) = handle.request_batch(messages, SocketAddr::new(0, 0)) {
        {
            while let Some(reply) = replies.next().await {
                let NetlinkPayload::Error(e) = reply.payload else {
                    continue;
                };
                let Some(&(op, delete)) = about.get(results.len()) else {
                    break;
                };
                results.push(match e.code {
                    None => Ok(()),
                    Some(code) => {
                        let e = NetlinkError::kernel(op, -code.get());
                        if delete && e.is_not_found() {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    }
                });
            }
        }
    }
    // The connection closed before every answer came.
    while results.len() < about.len() {
        let (op, _) = about[results.len()];
        results.push(Err(NetlinkError::Closed { op: op.to_string() }));
    }
    results
}

impl Netlink {
    /// Sends the batch's changes (route-family ones and nexthop ones at the same time, each kind
    /// in one datagram) and returns each change's answer in the order they were added.
    pub async fn send_batch(&self, batch: Batch) -> Vec<Result<(), NetlinkError>> {
        let Batch {
            routes,
            nexthops,
            slots,
        } = batch;
        let (routes, nexthops) = futures::join!(send_on(&self.handle, routes), send_on(&self.nexthops, nexthops));
        let (mut routes, mut nexthops) = (
            routes.into_iter().map(Some).collect::<Vec<_>>(),
            nexthops.into_iter().map(Some).collect::<Vec<_>>(),
        );
        slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Route(i) => routes[i].take().expect("one answer per change"),
                Slot::Nexthop(i) => nexthops[i].take().expect("one answer per change"),
                Slot::Refused(e) => Err(e),
            })
            .collect()
    }
}
