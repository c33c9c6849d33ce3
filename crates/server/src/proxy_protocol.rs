//! The PROXY protocol (HAProxy's, v1 text and v2 binary) in front of every TCP listener: a layer-4 load balancer
//! (HAProxy `send-proxy-v2`, an AWS NLB with proxy protocol on, nginx `proxy_protocol on` in a `stream` block)
//! opens a connection and says first whose it is. Without it every client behind the balancer would be one source:
//! one per-source limit shared by all, and TURN's XOR-MAPPED-ADDRESS naming the balancer.
//!
//! Only connections from `listen.proxy_protocol` sources are read this way, and each of them must start with a
//! header: a header from anyone else would let a stranger choose the address it is charged to, so it is not looked
//! for (and the connection is then TLS, STUN or HTTP that does not start with one).
//!
//! The header is parsed by the `ppp` crate. It is read with peeks and then consumed to its exact length, so that
//! what follows it (a TLS ClientHello, STUN, HTTP) is left in the socket for the listener's own sorting.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A v1 header is at most 107 bytes; a v2 header 16 and its addresses (216 at most, for Unix sockets) and TLVs (an
/// AWS NLB's VPC endpoint id, a TLS summary: a few hundred bytes). Longer is refused rather than held.
pub(crate) const MAX_HEADER: usize = 1024;

/// What a complete header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Bytes the header takes at the start of the stream.
    pub len: usize,
    /// The client's address; none for the balancer's own connections (v2 `LOCAL`, as health checks send, and v1
    /// `UNKNOWN`), which are served as the balancer's.
    pub client: Option<SocketAddr>,
}

/// Why a connection from a PROXY-protocol source was closed before it was served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("it does not start with a PROXY protocol header ({0})")]
    Invalid(String),
    #[error("its PROXY protocol header is longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("it closed before its PROXY protocol header was complete")]
    Closed,
    #[error("its PROXY protocol header did not arrive in time")]
    Timeout,
    #[error("reading its PROXY protocol header failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Parses the start of a stream: `Ok(None)` while the header is incomplete.
pub(crate) fn parse(bytes: &[u8]) -> Result<Option<Header>, HeaderError> {
    let parsed = HeaderResult::parse(bytes);
    if parsed.is_incomplete() {
        return if bytes.len() >= MAX_HEADER {
            Err(HeaderError::TooLong)
        } else {
            Ok(None)
        };
    }
    let header = match parsed {
        HeaderResult::V1(Ok(h)) => Header {
            len: h.header.len(),
            client: match h.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            },
        },
        HeaderResult::V2(Ok(h)) => Header {
            len: h.len(),
            client: match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                // LOCAL, or addresses that are not IP (a Unix socket, unspecified): the balancer's own connection.
                _ => None,
            },
        },
        HeaderResult::V1(Err(e)) => return Err(HeaderError::Invalid(e.to_string())),
        HeaderResult::V2(Err(e)) => return Err(HeaderError::Invalid(e.to_string())),
    };
    if header.len > MAX_HEADER {
        return Err(HeaderError::TooLong);
    }
    // An IPv4 client named as IPv4-mapped IPv6 is the same source as the IPv4 address.
    let client = header
        .client
        .map(|addr| SocketAddr::new(addr.ip().to_canonical(), addr.port()));
    Ok(Some(Header { client, ..header }))
}

/// Reads the header at the start of `stream` within `timeout` and consumes exactly its bytes.
pub(crate) async fn read(stream: &mut TcpStream, timeout: Duration) -> Result<Header, HeaderError> {
    tokio::time::timeout(timeout, read_header(stream))
        .await
        .map_err(|_| HeaderError::Timeout)?
}

async fn read_header(stream: &mut TcpStream) -> Result<Header, HeaderError> {
    let mut buf = vec![0u8; MAX_HEADER];
    // Bytes of an incomplete header already consumed: a peek returns at once while anything is queued, so a header
    // that arrived in part is taken out of the socket (all of it is header) and the next peek waits for more.
    let mut have = 0;
    loop {
        let n = stream.peek(buf.get_mut(have..).ok_or(HeaderError::TooLong)?).await?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        let seen = buf.get(..have + n).ok_or(HeaderError::TooLong)?;
        let header = parse(seen)?;
        // What to take out of the socket: the header's rest, or (incomplete) all that was peeked.
        let to = match header {
            Some(h) if h.len > have => h.len,
            Some(_) => return Err(HeaderError::Invalid("a header shorter than its own start".into())),
            None => have + n,
        };
        stream
            .read_exact(buf.get_mut(have..to).ok_or(HeaderError::TooLong)?)
            .await?;
        match header {
            Some(header) => return Ok(header),
            None => have = to,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    fn v2(command: u8, addresses: Option<(SocketAddr, SocketAddr)>, tlv: &[u8]) -> Vec<u8> {
        let mut b = v2::Builder::with_addresses(
            0x20 | command,
            v2::Protocol::Stream,
            match addresses {
                Some(pair) => v2::Addresses::from(pair),
                None => v2::Addresses::Unspecified,
            },
        );
        if !tlv.is_empty() {
            b = b.write_tlv(v2::Type::NoOp, tlv).expect("tlv");
        }
        b.build().expect("header")
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn v1_and_v2_name_the_client() {
        let line = b"PROXY TCP4 198.51.100.7 192.0.2.1 40000 443\r\n\x16\x03\x01";
        assert_eq!(
            parse(line).expect("v1"),
            Some(Header {
                len: line.len() - 3,
                client: Some(addr("198.51.100.7:40000"))
            })
        );
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n";
        assert_eq!(
            parse(line).expect("v1 ipv6").and_then(|h| h.client),
            Some(addr("[2001:db8::7]:40000"))
        );
        let mut bytes = v2(1, Some((addr("203.0.113.9:5000"), addr("192.0.2.1:443"))), b"vpce-0123");
        let len = bytes.len();
        bytes.extend_from_slice(b"\x00\x01STUN follows");
        assert_eq!(
            parse(&bytes).expect("v2"),
            Some(Header {
                len,
                client: Some(addr("203.0.113.9:5000"))
            })
        );
        let mapped = v2(
            1,
            Some((addr("[::ffff:203.0.113.9]:5000"), addr("[::ffff:192.0.2.1]:443"))),
            &[],
        );
        assert_eq!(
            parse(&mapped).expect("v2 mapped").and_then(|h| h.client),
            Some(addr("203.0.113.9:5000")),
            "an IPv4-mapped client is its IPv4 source"
        );
    }

    #[test]
    fn the_balancers_own_connections_name_no_client() {
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").expect("v1").map(|h| h.client), Some(None));
        let local = v2(0, None, &[]);
        assert_eq!(
            parse(&local).expect("v2 local"),
            Some(Header {
                len: local.len(),
                client: None
            })
        );
        let local = v2(0, Some((addr("10.0.0.2:1"), addr("10.0.0.1:443"))), &[]);
        assert_eq!(parse(&local).expect("v2 local").and_then(|h| h.client), None);
    }

    #[test]
    fn partial_headers_wait_and_garbage_is_refused() {
        let full = v2(1, Some((addr("203.0.113.9:5000"), addr("192.0.2.1:443"))), &[]);
        for cut in [1, 11, 12, 15, 16, full.len() - 1] {
            assert!(matches!(parse(&full[..cut]), Ok(None)), "{cut} of {} bytes", full.len());
        }
        assert!(matches!(parse(b"PROXY TCP4 198.51.100.7"), Ok(None)));
        for garbage in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
            b"GET / HTTP/1.1\r\n",
            b"\x00\x01\x00\x00\x21\x12\xa4\x42",
            b"PROXY TCP4 not-an-address 192.0.2.1 1 2\r\n",
            b"PROXY TCP4 198.51.100.7 192.0.2.1 99999 443\r\n",
        ] {
            assert!(matches!(parse(garbage), Err(HeaderError::Invalid(_))), "{garbage:?}");
        }
        assert!(matches!(parse(&[b'P'; 200]), Err(HeaderError::Invalid(_))));
        let long = v2(1, Some((addr("203.0.113.9:5000"), addr("192.0.2.1:443"))), &[7; 2000]);
        assert!(matches!(parse(&long[..MAX_HEADER]), Err(HeaderError::TooLong)));
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    /// The header arrives in pieces; exactly its bytes are consumed and what follows is left to read.
    #[tokio::test]
    async fn a_header_in_pieces_is_read_and_only_it_is_consumed() {
        let (mut client, mut server) = pair().await;
        let writer = tokio::spawn(async move {
            for piece in [
                &b"PROXY TCP4 198.51"[..],
                b".100.7 192.0.2.1 4",
                b"0000 443\r",
                b"\nhello",
            ] {
                client.write_all(piece).await.expect("write");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client
        });
        let header = read(&mut server, Duration::from_secs(5)).await.expect("header");
        assert_eq!(header.client, Some(addr("198.51.100.7:40000")));
        let mut rest = [0u8; 5];
        server.read_exact(&mut rest).await.expect("rest");
        assert_eq!(&rest, b"hello");
        drop(writer.await);
    }

    #[tokio::test]
    async fn silence_times_out_and_a_close_is_reported() {
        let (client, mut server) = pair().await;
        let started = tokio::time::Instant::now();
        assert!(matches!(
            read(&mut server, Duration::from_millis(100)).await,
            Err(HeaderError::Timeout)
        ));
        assert!(started.elapsed() < Duration::from_secs(2));
        let (mut client2, mut server2) = pair().await;
        client2.write_all(b"PROXY TCP4").await.expect("write");
        drop(client2);
        drop(client);
        assert!(matches!(
            read(&mut server2, Duration::from_secs(5)).await,
            Err(HeaderError::Closed)
        ));
    }
}
