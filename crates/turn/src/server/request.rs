//! A request's attributes, collected and validated in one pass before any is acted on.

use super::*;

/// The attributes of a TURN request, collected in one pass.
#[derive(Default)]
pub(super) struct Request<'a> {
    pub(super) username: Option<&'a str>,
    pub(super) userhash: Option<&'a [u8; 32]>,
    pub(super) realm: Option<&'a str>,
    pub(super) nonce: Option<&'a str>,
    pub(super) password_algorithm: Option<u16>,
    pub(super) password_algorithms: Option<&'a [u8]>,
    pub(super) lifetime: Option<u32>,
    pub(super) requested_transport: Option<u8>,
    pub(super) requested_family: Option<u8>,
    pub(super) additional_family: Option<u8>,
    pub(super) even_port: Option<bool>,
    pub(super) reservation_token: Option<[u8; 8]>,
    pub(super) dont_fragment: bool,
    pub(super) channel_number: Option<u16>,
    pub(super) peers: [Option<SocketAddr>; 8],
    pub(super) peer_count: usize,
    pub(super) data: Option<(usize, usize)>,
    /// RFC 5780 (Binding only): CHANGE-REQUEST flags (change IP, change port), RESPONSE-PORT, PADDING length.
    pub(super) change_request: Option<(bool, bool)>,
    pub(super) response_port: Option<u16>,
    pub(super) padding: Option<usize>,
    pub(super) unknown: [u16; 8],
    pub(super) unknown_count: usize,
    pub(super) malformed: bool,
}

impl<'a> Request<'a> {
    pub(super) fn collect(msg: &Message<'a>) -> Self {
        let mut req = Request::default();
        let tid = msg.transaction_id();
        let base = msg.as_bytes().as_ptr() as usize;
        for raw in msg.attributes() {
            let Ok(attribute) = Attribute::decode(raw, &tid) else {
                req.malformed = true;
                continue;
            };
            match attribute {
                Attribute::Username(u) => req.username = Some(u),
                Attribute::UserHash(h) => req.userhash = Some(h),
                Attribute::Realm(r) => req.realm = Some(r),
                Attribute::Nonce(n) => req.nonce = Some(n),
                Attribute::PasswordAlgorithm(p) => req.password_algorithm = Some(p.algorithm),
                Attribute::PasswordAlgorithms(list) => req.password_algorithms = Some(list),
                Attribute::Lifetime(l) => req.lifetime = Some(l),
                Attribute::RequestedTransport(t) => req.requested_transport = Some(t),
                Attribute::RequestedAddressFamily(f) => req.requested_family = Some(f),
                Attribute::AdditionalAddressFamily(f) => req.additional_family = Some(f),
                Attribute::EvenPort { reserve } => req.even_port = Some(reserve),
                Attribute::ReservationToken(t) => req.reservation_token = Some(t),
                Attribute::DontFragment => req.dont_fragment = true,
                Attribute::ChannelNumber(n) => req.channel_number = Some(n),
                Attribute::XorPeerAddress(p) => {
                    match req.peers.get_mut(req.peer_count) {
                        Some(slot) => *slot = Some(p),
                        None => req.malformed = true,
                    }
                    req.peer_count += 1;
                }
                Attribute::Data(d) => {
                    let start = d.as_ptr() as usize - base;
                    req.data = Some((start, start + d.len()));
                }
                Attribute::ChangeRequest { change_ip, change_port } => {
                    req.change_request = Some((change_ip, change_port));
                }
                Attribute::ResponsePort(p) => req.response_port = Some(p),
                Attribute::Padding(p) => req.padding = Some(p.len()),
                Attribute::Unknown(raw) if is_comprehension_required(raw.ty) => {
                    if let Some(slot) = req.unknown.get_mut(req.unknown_count) {
                        *slot = raw.ty;
                        req.unknown_count += 1;
                    }
                }
                _ => {}
            }
        }
        req
    }

    /// Records a comprehension-required attribute this server does not honour here, for a 420.
    pub(super) fn refuse(&mut self, ty: u16) {
        if let Some(slot) = self.unknown.get_mut(self.unknown_count) {
            *slot = ty;
            self.unknown_count += 1;
        }
    }

    pub(super) fn peers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers.iter().take(self.peer_count).flatten().copied()
    }
}
