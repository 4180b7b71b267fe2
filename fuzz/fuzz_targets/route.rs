//! Fuzzes herald's HTTP front door, `herald::http::route`: whatever the
//! bytes, it must not panic, and what it decides must be consistent with
//! them. The first input byte picks the configuration (Origin allow-list,
//! `--require-origin`, draining, publish endpoint), the rest is the request.
#![no_main]

mod common;

use common::config;
use herald::http::{route, Phase, Route, MAX_HEAD_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&bits, data)) = input.split_first() else {
        return;
    };
    let cfg = config(bits);
    let phase = if bits & 4 != 0 {
        Phase::Draining
    } else {
        Phase::Serving
    };
    let decided = route(data, &cfg, phase);
    match &decided {
        Route::Incomplete => {
            assert!(
                data.len() < MAX_HEAD_LEN,
                "waits for more past the head limit"
            );
            // Nothing decided on the whole means nothing decided on a part.
            for cut in [0, data.len() / 2, data.len().saturating_sub(1)] {
                assert_eq!(
                    route(&data[..cut], &cfg, phase),
                    Route::Incomplete,
                    "cut {cut}"
                );
            }
        }
        Route::Upgrade { response, .. } => {
            assert_eq!(phase, Phase::Serving, "upgraded while draining");
            assert!(response.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
            assert!(response.ends_with(b"\r\n\r\n"));
        }
        Route::Get { head_len, .. } => {
            assert!(*head_len > 0 && *head_len <= data.len().min(MAX_HEAD_LEN));
        }
        Route::Publish {
            head_len, body_len, ..
        } => {
            assert!(
                cfg.publish_token.is_some(),
                "publish without a token configured"
            );
            assert!(*head_len > 0 && *head_len <= data.len().min(MAX_HEAD_LEN));
            assert!(*body_len <= cfg.max_body);
        }
        Route::Reject(status, reason) => {
            assert!((400..600).contains(&status.code()));
            assert!(!reason.is_empty() && !reason.contains('\n'));
        }
    }
    // A pure function: the same bytes, the same answer.
    assert_eq!(route(data, &cfg, phase), decided);
});
