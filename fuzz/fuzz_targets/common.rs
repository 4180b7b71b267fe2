//! What both targets share.

use herald::http::RouteConfig;

/// The route configuration the low five bits of `bits` pick: bit 0 an
/// `--allow-origin` list, bit 1 `--require-origin`, bit 3 `POST /publish`
/// (token `t0ken`), bit 4 `/metrics`. (Bit 2 is the phase: draining.)
pub fn config(bits: u8) -> RouteConfig {
    RouteConfig {
        allow_origins: if bits & 1 != 0 {
            vec![
                "https://chat.example.com".into(),
                "*.example.org".into(),
                "localhost".into(),
            ]
        } else {
            Vec::new()
        },
        require_origin: bits & 2 != 0,
        publish_token: (bits & 8 != 0).then(|| "t0ken".into()),
        metrics_path: (bits & 16 != 0).then(|| "/metrics".into()),
        max_body: 1024,
    }
}
