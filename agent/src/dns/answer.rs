//! Answering one query (sans I/O): from a decoded request and the current [`Snapshot`] to a
//! response, or to "forward it". Also the wire rules shared by every transport: FORMERR for
//! what does not decode, EDNS negotiation, and truncation with TC.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::records::{Found, Node, Snapshot, key_of};

/// The largest UDP payload we offer and accept (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;

/// What to do with a request.
#[derive(Debug)]
pub enum Decision {
    /// Send this response.
    Reply(Box<Message>),
    /// Not ours: ask the upstream resolvers.
    Forward(Box<Message>),
    /// A CNAME of ours to a name that is not: ask the upstream resolvers the second question
    /// and append its answers to the first reply (which holds the CNAME).
    Chase(Box<Message>, Box<Message>),
    /// Not worth an answer (a response, or too short to carry an ID).
    Drop,
}

/// What the request asked, for metrics and transport limits.
#[derive(Clone, Copy, Debug)]
pub struct Asked {
    /// The query type (`None` when there was no question).
    pub qtype: Option<RecordType>,
    /// The UDP payload the client accepts.
    pub udp_limit: usize,
}

/// A bare error response for a request that did not decode: the header's ID and opcode, QR
/// set, the given code. `None` when there are not even 12 bytes or it is itself a response.
pub fn error_for_bytes(bytes: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        return None;
    }
    let mut out = vec![0u8; 12];
    out[0] = bytes[0];
    out[1] = bytes[1];
    // QR, the opcode, RD copied.
    out[2] = 0x80 | (bytes[2] & 0x79);
    out[3] = code.low() & 0x0f;
    Some(out)
}

/// The response skeleton for `req`: same ID, opcode, RD and CD, question copied, EDNS answered
/// when the request had it.
fn skeleton(req: &Message, code: ResponseCode) -> Message {
    let mut m = Message::response(req.id, req.op_code);
    m.metadata = Metadata::response_from_request(&req.metadata);
    m.metadata.recursion_available = true;
    m.metadata.response_code = code;
    m.queries = req.queries.clone();
    if req.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        e.set_version(0);
        m.edns = Some(e);
    }
    m
}

/// The UDP payload limit of a request: 512 without EDNS, its advertised size otherwise
/// (at least 512, at most ours).
pub fn udp_limit(req: &Message) -> usize {
    match &req.edns {
        Some(e) => usize::from(e.max_payload().clamp(512, EDNS_PAYLOAD)),
        None => 512,
    }
}

/// The zone's SOA record.
pub fn soa(snap: &Snapshot, owner: &Name) -> Record {
    Record::from_rdata(
        owner.clone(),
        snap.ttl,
        RData::SOA(SOA::new(
            snap.soa_mname.clone(),
            snap.soa_rname.clone(),
            snap.serial,
            7200,
            1800,
            86400,
            snap.ttl,
        )),
    )
}

fn push_node(out: &mut Vec<Record>, owner: &Name, node: &Node, qtype: RecordType, ttl: u32) {
    let any = qtype == RecordType::ANY;
    if any || qtype == RecordType::A {
        for ip in &node.a {
            out.push(Record::from_rdata(owner.clone(), ttl, RData::A(A(*ip))));
        }
    }
    if any || qtype == RecordType::AAAA {
        for ip in &node.aaaa {
            out.push(Record::from_rdata(
                owner.clone(),
                ttl,
                RData::AAAA(AAAA(*ip)),
            ));
        }
    }
    if any || qtype == RecordType::SRV {
        for s in &node.srv {
            out.push(Record::from_rdata(
                owner.clone(),
                ttl,
                RData::SRV(SRV::new(s.priority, s.weight, s.port, s.target.clone())),
            ));
        }
    }
    if any || qtype == RecordType::PTR {
        for p in &node.ptr {
            out.push(Record::from_rdata(
                owner.clone(),
                ttl,
                RData::PTR(PTR(p.clone())),
            ));
        }
    }
    if (any || qtype == RecordType::TXT) && !node.txt.is_empty() {
        out.push(Record::from_rdata(
            owner.clone(),
            ttl,
            RData::TXT(TXT::new(node.txt.clone())),
        ));
    }
}

/// Answers `req` from `snap` (`None` before the first sync: SERVFAIL, never a guess).
pub fn respond(snap: Option<&Snapshot>, req: Message) -> (Decision, Asked) {
    let mut asked = Asked {
        qtype: req.queries.first().map(Query::query_type),
        udp_limit: udp_limit(&req),
    };
    if req.message_type != MessageType::Query {
        return (Decision::Drop, asked);
    }
    if req.op_code != OpCode::Query {
        return (
            Decision::Reply(Box::new(skeleton(&req, ResponseCode::NotImp))),
            asked,
        );
    }
    if let Some(e) = &req.edns
        && e.version() > 0
    {
        let mut m = skeleton(&req, ResponseCode::BADVERS);
        m.queries.clear();
        asked.qtype = None;
        return (Decision::Reply(Box::new(m)), asked);
    }
    if req.queries.len() != 1 || !req.answers.is_empty() || !req.authorities.is_empty() {
        return (
            Decision::Reply(Box::new(skeleton(&req, ResponseCode::FormErr))),
            asked,
        );
    }
    let q = &req.queries[0];
    let qtype = q.query_type();
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR | RecordType::OPT) {
        return (
            Decision::Reply(Box::new(skeleton(&req, ResponseCode::Refused))),
            asked,
        );
    }
    let Some(snap) = snap else {
        return (
            Decision::Reply(Box::new(skeleton(&req, ResponseCode::ServFail))),
            asked,
        );
    };
    if q.query_class() != DNSClass::IN && q.query_class() != DNSClass::ANY {
        return (Decision::Forward(Box::new(req)), asked);
    }
    let key = key_of(q.name());
    let found = snap.find(&key);
    let owner = q.name().clone();
    let mut m = match found {
        Found::Elsewhere => return (Decision::Forward(Box::new(req)), asked),
        Found::NxDomain => {
            let mut m = skeleton(&req, ResponseCode::NXDomain);
            m.authorities.push(soa(snap, &snap.zone));
            m
        }
        Found::Pod(ip) => {
            let mut m = skeleton(&req, ResponseCode::NoError);
            let rec = match ip {
                IpAddr::V4(v4) if matches!(qtype, RecordType::A | RecordType::ANY) => {
                    Some(RData::A(A(v4)))
                }
                IpAddr::V6(v6) if matches!(qtype, RecordType::AAAA | RecordType::ANY) => {
                    Some(RData::AAAA(AAAA(v6)))
                }
                _ => None,
            };
            match rec {
                Some(r) => m.answers.push(Record::from_rdata(owner, snap.ttl, r)),
                None => m.authorities.push(soa(snap, &snap.zone)),
            }
            m
        }
        Found::Node { node, .. } if node.cname.is_some() => {
            let target = node.cname.clone().unwrap_or_else(Name::root);
            let mut m = skeleton(&req, ResponseCode::NoError);
            m.answers.push(Record::from_rdata(
                owner,
                snap.ttl,
                RData::CNAME(CNAME(target.clone())),
            ));
            if matches!(qtype, RecordType::CNAME | RecordType::ANY) {
                m.metadata.authoritative = true;
                return (Decision::Reply(Box::new(m)), asked);
            }
            match snap.find(&key_of(&target)) {
                Found::Node { node: t, .. } if t.cname.is_none() => {
                    push_node(&mut m.answers, &target, t, qtype, snap.ttl);
                }
                Found::Pod(_) | Found::Node { .. } => {}
                Found::NxDomain => {
                    m.metadata.response_code = ResponseCode::NXDomain;
                    m.authorities.push(soa(snap, &snap.zone));
                }
                Found::Elsewhere => {
                    let mut q = Message::query();
                    q.metadata.id = req.id;
                    q.metadata.recursion_desired = true;
                    q.edns = req.edns.clone();
                    q.add_query(Query::query(target, qtype));
                    return (Decision::Chase(Box::new(m), Box::new(q)), asked);
                }
            }
            m
        }
        Found::Node { node, cluster } => {
            let mut m = skeleton(&req, ResponseCode::NoError);
            push_node(&mut m.answers, &owner, node, qtype, snap.ttl);
            if node.apex && matches!(qtype, RecordType::SOA | RecordType::ANY) {
                m.answers.push(soa(snap, &owner));
            }
            if qtype == RecordType::SRV || qtype == RecordType::ANY {
                for s in &node.srv {
                    if let Some(t) = snap.node(&key_of(&s.target)) {
                        push_node(&mut m.additionals, &s.target, t, RecordType::A, snap.ttl);
                        push_node(&mut m.additionals, &s.target, t, RecordType::AAAA, snap.ttl);
                    }
                }
            }
            if m.answers.is_empty() {
                // NODATA: the name exists with other types (or none).
                let apex = if cluster { snap.zone.clone() } else { owner };
                m.authorities.push(soa(snap, &apex));
            }
            m
        }
    };
    m.metadata.authoritative = true;
    (Decision::Reply(Box::new(m)), asked)
}

/// Encodes `m` for a transport that carries at most `limit` bytes: when the whole answer does
/// not fit, the header and question alone with TC set (the client retries over TCP).
pub fn encode(m: &Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = m.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    let mut t = Message::response(m.id, m.op_code);
    t.metadata = m.metadata;
    t.metadata.truncation = true;
    t.queries = m.queries.clone();
    t.edns = m.edns.clone();
    t.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::records::tests::{mk_route, mk_slice, snapshot};
    use proptest::prelude::*;

    fn ask(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m
    }

    fn reply(snap: Option<&Snapshot>, req: Message) -> Message {
        match respond(snap, req).0 {
            Decision::Reply(m) => *m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_external_name_is_a_cname_chased_upstream_or_in_the_zone() {
        use crate::dns::records::tests::{mk_service, native_snapshot};
        let snap = native_snapshot(
            &[
                mk_service("shop", "ext", "ExternalName", &[], Some("db.example.test")),
                mk_service(
                    "shop",
                    "alias",
                    "ExternalName",
                    &[],
                    Some("web.shop.svc.cluster.local"),
                ),
                mk_service("shop", "web", "ClusterIP", &["198.18.240.9"], None),
            ],
            &[],
        );
        let q = ask("ext.shop.svc.cluster.local.", RecordType::A);
        match respond(Some(&snap), q).0 {
            Decision::Chase(reply, target) => {
                assert_eq!(reply.answers.len(), 1);
                assert_eq!(reply.answers[0].record_type(), RecordType::CNAME);
                assert_eq!(target.queries[0].name().to_ascii(), "db.example.test.");
                assert_eq!(target.queries[0].query_type(), RecordType::A);
            }
            other => panic!("{other:?}"),
        }
        let m = reply(
            Some(&snap),
            ask("ext.shop.svc.cluster.local.", RecordType::CNAME),
        );
        assert_eq!(m.answers.len(), 1);
        // An in-zone target is answered at once: CNAME, then the target's address.
        let m = reply(
            Some(&snap),
            ask("alias.shop.svc.cluster.local.", RecordType::A),
        );
        let types: Vec<RecordType> = m.answers.iter().map(|r| r.record_type()).collect();
        assert_eq!(types, [RecordType::CNAME, RecordType::A]);
    }

    fn snap() -> Snapshot {
        let mut big = mk_route("shop", "big", true, &[]);
        big.spec.hostnames.clear();
        let ips: Vec<String> = (1..=80).map(|i| format!("198.18.131.{i}")).collect();
        let eps: Vec<(&str, bool)> = ips.iter().map(|s| (s.as_str(), true)).collect();
        snapshot(
            &[mk_route("shop", "web", false, &["198.18.200.5"]), big],
            &[mk_slice("shop", "big", &eps)],
        )
    }

    #[test]
    fn nxdomain_nodata_and_soa_are_exact() {
        let s = snap();
        let m = reply(Some(&s), ask("WEB.shop.SVC.cluster.local.", RecordType::A));
        assert_eq!(m.response_code, ResponseCode::NoError);
        assert!(m.authoritative);
        assert_eq!(m.answers.len(), 1);
        // The answer keeps the question's spelling.
        assert_eq!(m.answers[0].name.to_ascii(), "WEB.shop.SVC.cluster.local.");
        let m = reply(
            Some(&s),
            ask("web.shop.svc.cluster.local.", RecordType::AAAA),
        );
        assert_eq!(m.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        let m = reply(
            Some(&s),
            ask("web.default.svc.cluster.local.", RecordType::A),
        );
        assert_eq!(m.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(m.authorities[0].name.to_ascii(), "cluster.local.");
        let m = reply(Some(&s), ask("cluster.local.", RecordType::SOA));
        assert_eq!(m.answers[0].record_type(), RecordType::SOA);
        let m = reply(
            Some(&s),
            ask("_http._tcp.web.shop.svc.cluster.local.", RecordType::SRV),
        );
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.additionals.len(), 1);
        assert!(matches!(
            respond(Some(&s), ask("example.test.", RecordType::A)).0,
            Decision::Forward(_)
        ));
        let m = reply(None, ask("web.shop.svc.cluster.local.", RecordType::A));
        assert_eq!(m.response_code, ResponseCode::ServFail);
    }

    #[test]
    fn large_answers_truncate_without_edns_and_fit_with_it() {
        let s = snap();
        let req = ask("big.shop.svc.cluster.local.", RecordType::A);
        let m = reply(Some(&s), req.clone());
        assert_eq!(m.answers.len(), 80);
        let small = encode(&m, udp_limit(&req)).unwrap();
        let back = Message::from_vec(&small).unwrap();
        assert!(back.truncation);
        assert!(back.answers.is_empty());
        let full = encode(&m, 65535).unwrap();
        assert_eq!(Message::from_vec(&full).unwrap().answers.len(), 80);
    }

    #[test]
    fn garbage_gets_formerr_and_short_garbage_nothing() {
        assert_eq!(error_for_bytes(&[1, 2], ResponseCode::FormErr), None);
        let e = error_for_bytes(
            &[7, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff],
            ResponseCode::FormErr,
        )
        .unwrap();
        assert_eq!(&e[..2], &[7, 9]);
        assert_eq!(e[2] & 0x80, 0x80);
        assert_eq!(e[3] & 0x0f, 1);
    }

    proptest! {
        #[test]
        fn any_name_gets_an_answer_that_encodes(labels in proptest::collection::vec("[a-zA-Z0-9_-]{1,20}", 0..6), t in 0u16..300) {
            let s = snap();
            let mut name = labels.join(".");
            name.push_str(".svc.cluster.local.");
            if let Ok(n) = Name::from_ascii(&name) {
                let mut req = Message::query();
                req.add_query(Query::query(n, RecordType::from(t)));
                if let (Decision::Reply(m), asked) = respond(Some(&s), req) {
                    let bytes = encode(&m, asked.udp_limit);
                    prop_assert!(bytes.is_some());
                    prop_assert!(matches!(m.response_code, ResponseCode::NoError | ResponseCode::NXDomain | ResponseCode::Refused));
                }
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(m) = Message::from_vec(&bytes) {
                let _ = respond(Some(&snap()), m);
            } else {
                let _ = error_for_bytes(&bytes, ResponseCode::FormErr);
            }
        }
    }
}
