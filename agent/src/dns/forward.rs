//! Forwarding what is not ours: each upstream in turn over UDP (TCP when the answer comes back
//! truncated), a timeout per attempt, and a bounded cache of answers keyed by the lowercased
//! question, kept for the answer's TTL (negative answers for their SOA minimum).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::RData;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::answer::EDNS_PAYLOAD;
use super::records::key_of;
use crate::error::Error;

/// Longest time an answer stays cached, whatever its TTL says.
const MAX_CACHE_TTL: u32 = 300;

#[derive(Clone, Hash, PartialEq, Eq)]
struct Key {
    name: String,
    qtype: u16,
    qclass: u16,
}

struct Entry {
    response: Message,
    stored: Instant,
    ttl: u32,
}

/// The upstream resolvers and the answer cache.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    capacity: usize,
    cache: Mutex<HashMap<Key, Entry>>,
}

/// What happened to one forwarded question.
pub struct Forwarded {
    /// The client's response.
    pub response: Message,
    /// Whether it came from the cache.
    pub cached: bool,
    /// Upstream attempts that failed on the way.
    pub failures: u32,
}

fn cache_ttl(m: &Message) -> u32 {
    let ttl = if m.response_code == ResponseCode::NoError && !m.answers.is_empty() {
        m.answers.iter().map(|r| r.ttl).min().unwrap_or(0)
    } else if matches!(
        m.response_code,
        ResponseCode::NoError | ResponseCode::NXDomain
    ) {
        m.authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
            .unwrap_or(0)
    } else {
        0
    };
    ttl.min(MAX_CACHE_TTL)
}

impl Forwarder {
    /// A forwarder to `upstreams`, waiting `timeout` per attempt, caching up to `capacity`
    /// answers.
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration, capacity: usize) -> Self {
        Self {
            upstreams,
            timeout,
            capacity,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn key(q: &Query) -> Key {
        Key {
            name: key_of(q.name()),
            qtype: u16::from(q.query_type()),
            qclass: u16::from(q.query_class()),
        }
    }

    fn cached(&self, key: &Key) -> Option<Message> {
        let mut cache = self.cache.lock().ok()?;
        let e = cache.get(key)?;
        let age = u32::try_from(e.stored.elapsed().as_secs()).unwrap_or(u32::MAX);
        if age >= e.ttl {
            cache.remove(key);
            return None;
        }
        let mut m = e.response.clone();
        for r in m
            .answers
            .iter_mut()
            .chain(m.authorities.iter_mut())
            .chain(m.additionals.iter_mut())
        {
            r.ttl = r.ttl.saturating_sub(age);
        }
        Some(m)
    }

    fn store(&self, key: Key, m: &Message) {
        let ttl = cache_ttl(m);
        if ttl == 0 || self.capacity == 0 {
            return;
        }
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= self.capacity {
            cache.retain(|_, e| e.stored.elapsed().as_secs() < u64::from(e.ttl));
            if cache.len() >= self.capacity {
                // Still full of live answers: drop an arbitrary one.
                if let Some(k) = cache.keys().next().cloned() {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(
            key,
            Entry {
                response: m.clone(),
                stored: Instant::now(),
                ttl,
            },
        );
    }

    /// Answers `req` from the cache or the upstreams. The response carries the client's ID
    /// and question spelling.
    pub async fn resolve(&self, req: &Message) -> crate::Result<Forwarded> {
        let Some(q) = req.queries.first() else {
            return Err(Error::Upstream {
                question: String::new(),
                reason: "no question".into(),
            });
        };
        let key = Self::key(q);
        let finish = |mut m: Message| {
            m.metadata.id = req.id;
            m.metadata.message_type = MessageType::Response;
            m.metadata.recursion_desired = req.recursion_desired;
            m.metadata.recursion_available = true;
            m.metadata.authoritative = false;
            m.metadata.truncation = false;
            m.queries = req.queries.clone();
            m.edns = req.edns.as_ref().map(|_| {
                let mut e = Edns::new();
                e.set_max_payload(EDNS_PAYLOAD);
                e
            });
            m.signature = None;
            m
        };
        if let Some(m) = self.cached(&key) {
            return Ok(Forwarded {
                response: finish(m),
                cached: true,
                failures: 0,
            });
        }
        if self.upstreams.is_empty() {
            return Err(Error::Upstream {
                question: key.name,
                reason: "no upstream resolver is configured (--dns-upstream)".into(),
            });
        }
        let mut out = Message::query();
        out.metadata.recursion_desired = true;
        out.add_query(q.clone());
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        out.edns = Some(e);
        let mut failures = 0;
        let mut last = String::new();
        let mut servfail: Option<Message> = None;
        for up in &self.upstreams {
            match self.ask(*up, &out).await {
                Ok(m) if m.response_code == ResponseCode::ServFail => {
                    failures += 1;
                    last = format!("{up}: SERVFAIL");
                    servfail = Some(m);
                }
                Ok(m) => {
                    self.store(key, &m);
                    return Ok(Forwarded {
                        response: finish(m),
                        cached: false,
                        failures,
                    });
                }
                Err(e) => {
                    failures += 1;
                    last = format!("{up}: {e}");
                }
            }
        }
        match servfail {
            Some(m) => Ok(Forwarded {
                response: finish(m),
                cached: false,
                failures,
            }),
            None => Err(Error::Upstream {
                question: key.name,
                reason: last,
            }),
        }
    }

    async fn ask(&self, up: SocketAddr, q: &Message) -> Result<Message, String> {
        let bytes = q.to_vec().map_err(|e| e.to_string())?;
        let m = tokio::time::timeout(self.timeout, ask_udp(up, &bytes, q.id))
            .await
            .map_err(|_| format!("no UDP answer within {:?}", self.timeout))??;
        if !m.truncation {
            return Ok(m);
        }
        tokio::time::timeout(self.timeout, ask_tcp(up, &bytes, q.id))
            .await
            .map_err(|_| format!("no TCP answer within {:?}", self.timeout))?
    }

    /// Answers cached now.
    pub fn cache_len(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }
}

fn matches(m: &Message, id: u16, q: &[u8]) -> bool {
    let Ok(req) = Message::from_vec(q) else {
        return false;
    };
    m.id == id
        && m.message_type == MessageType::Response
        && m.queries.first().map(|x| key_of(x.name()))
            == req.queries.first().map(|x| key_of(x.name()))
}

async fn ask_udp(up: SocketAddr, bytes: &[u8], id: u16) -> Result<Message, String> {
    let bind: SocketAddr = if up.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    sock.connect(up).await.map_err(|e| e.to_string())?;
    sock.send(bytes).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
        // Anything that is not the answer to our question is ignored (spoofing, stragglers).
        if let Ok(m) = Message::from_vec(&buf[..n])
            && matches(&m, id, bytes)
        {
            return Ok(m);
        }
    }
}

async fn ask_tcp(up: SocketAddr, bytes: &[u8], id: u16) -> Result<Message, String> {
    let mut s = TcpStream::connect(up).await.map_err(|e| e.to_string())?;
    let len = u16::try_from(bytes.len()).map_err(|e| e.to_string())?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    s.write_all(&framed).await.map_err(|e| e.to_string())?;
    let mut lb = [0u8; 2];
    s.read_exact(&mut lb).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(lb))];
    s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    let m = Message::from_vec(&buf).map_err(|e| e.to_string())?;
    if !matches(&m, id, bytes) {
        return Err("the TCP answer does not match the question".into());
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record, RecordType};

    fn answer(ttl: u32) -> Message {
        let mut m = Message::response(1, hickory_proto::op::OpCode::Query);
        let n = Name::from_ascii("www.example.test.").unwrap();
        m.add_query(Query::query(n.clone(), RecordType::A));
        m.add_answer(Record::from_rdata(
            n,
            ttl,
            RData::A(A([198, 18, 250, 1].into())),
        ));
        m
    }

    #[test]
    fn the_cache_keeps_answers_for_their_ttl_and_stays_bounded() {
        let f = Forwarder::new(vec![], Duration::from_secs(1), 2);
        let q = |n: &str| Query::query(Name::from_ascii(n).unwrap(), RecordType::A);
        f.store(Forwarder::key(&q("WWW.example.test.")), &answer(30));
        let hit = f.cached(&Forwarder::key(&q("www.EXAMPLE.test."))).unwrap();
        assert_eq!(hit.answers[0].ttl, 30);
        f.store(Forwarder::key(&q("a.example.test.")), &answer(30));
        f.store(Forwarder::key(&q("b.example.test.")), &answer(30));
        assert_eq!(f.cache_len(), 2);
        f.store(Forwarder::key(&q("c.example.test.")), &answer(0));
        assert!(f.cached(&Forwarder::key(&q("c.example.test."))).is_none());
    }

    #[test]
    fn negative_answers_cache_for_the_soa_minimum() {
        let mut m = Message::response(1, hickory_proto::op::OpCode::Query);
        m.metadata.response_code = ResponseCode::NXDomain;
        let z = Name::from_ascii("example.test.").unwrap();
        m.add_authority(Record::from_rdata(
            z.clone(),
            600,
            RData::SOA(SOA::new(z.clone(), z, 1, 1, 1, 1, 20)),
        ));
        assert_eq!(cache_ttl(&m), 20);
        m.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(cache_ttl(&m), 0);
    }

    #[tokio::test]
    async fn no_upstream_is_a_clear_error() {
        let f = Forwarder::new(vec![], Duration::from_millis(100), 10);
        let mut req = Message::query();
        req.add_query(Query::query(
            Name::from_ascii("x.example.test.").unwrap(),
            RecordType::A,
        ));
        assert!(matches!(f.resolve(&req).await, Err(Error::Upstream { .. })));
    }
}
