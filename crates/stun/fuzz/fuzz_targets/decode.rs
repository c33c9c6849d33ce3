#![no_main]
//! Everything the server does with untrusted bytes before it trusts them: parse, decode every attribute, verify
//! integrity and fingerprint, and the ChannelData / stream framing paths. None of it may panic.

use libfuzzer_sys::fuzz_target;
use stun::{Attribute, ChannelData, IntegrityKey, Message};

fuzz_target!(|data: &[u8]| {
    let _ = stun::stream_frame_len(data);
    let _ = ChannelData::parse(data);
    let Ok(msg) = Message::parse(data) else { return };
    let tid = msg.transaction_id();
    for raw in msg.attributes() {
        match Attribute::decode(raw, &tid) {
            Ok(Attribute::UnknownAttributes(list)) => {
                let _ = Attribute::u16_list(list).count();
            }
            Ok(Attribute::PasswordAlgorithms(list)) => {
                let _ = Attribute::password_algorithms(list).count();
            }
            Ok(a) => assert_eq!(a.ty(), raw.ty),
            Err(_) => {}
        }
    }
    // The RFC 5769 §2.1 short-term password, so the seeds verify and mutations near them exercise both outcomes.
    let key = IntegrityKey::from_bytes(b"VOkJxbRl1RmTxUk/WvJxBt");
    let _ = msg.verify_integrity(&key);
    let _ = msg.check_fingerprint();
    let _ = msg.is_rfc3489();
});
