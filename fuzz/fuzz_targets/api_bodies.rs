//! Every request body the daemon accepts: parsed strictly or refused, and the
//! refusal never echoes the body (it may carry a share).
#![no_main]
use keyholder_api::{
    KeyringRequest, PrepareRequest, RetireRequest, RollbackRequest, ThrottleRequest,
    UnsealRequest, from_json,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    // The one refusal whose words do not depend on the body at all: a body
    // that is that sentence itself "contains" it without being echoed.
    let not_an_object = from_json::<UnsealRequest>(b"[]").err();
    if let Err(message) = from_json::<UnsealRequest>(body) {
        if body.len() > 24 && Some(&message) != not_an_object.as_ref() {
            if let Ok(text) = std::str::from_utf8(body) {
                assert!(!message.contains(text));
            }
        }
    }
    let _ = from_json::<PrepareRequest>(body);
    let _ = from_json::<ThrottleRequest>(body);
    let _ = from_json::<RetireRequest>(body);
    let _ = from_json::<RollbackRequest>(body);
    let _ = from_json::<KeyringRequest>(body);
});
