//! Properties of the HTTP front door, `herald::http::route`, a pure
//! function of the bytes received so far: it never panics, whatever the
//! bytes; a valid upgrade upgrades whatever else the request carries, in
//! any order and any letter case; any truncation of a valid head waits for
//! more; bytes after an upgrade head are refused; the head limits hold at
//! any size; an `Origin` matches a pattern only if it is
//! `scheme://host[:port]` and nothing else; a header read once (`Host`,
//! `Origin`, the WebSocket key and version) is refused when repeated;
//! `Content-Length` is canonical digits or 400. (`fuzz/` runs the same
//! entry point under libFuzzer.)

use herald::http::{
    origin_allowed, route, Phase, Route, RouteConfig, Status, MAX_HEADERS, MAX_HEAD_LEN,
};
use proptest::prelude::*;
use proptest::sample::select;

/// Header names the front door reads; extra headers never use them.
const SIGNIFICANT: [&str; 8] = [
    "host",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "origin",
    "content-length",
    "transfer-encoding",
];

fn config() -> RouteConfig {
    RouteConfig {
        metrics_path: Some("/metrics".into()),
        publish_token: Some("t0ken".into()),
        max_body: 1024,
        ..RouteConfig::default()
    }
}

/// `name` in any letter case.
fn any_case(name: &str) -> impl Strategy<Value = String> {
    let regex: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphabetic() {
                format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase())
            } else {
                regex_escape(c)
            }
        })
        .collect();
    prop::string::string_regex(&regex).expect("a valid regex")
}

fn regex_escape(c: char) -> String {
    if c.is_ascii_alphanumeric() || c == ' ' {
        c.to_string()
    } else {
        format!("\\x{:02x}", c as u32)
    }
}

/// A header name that the front door does not read.
fn extra_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,24}".prop_filter("a significant header", |n| {
        !SIGNIFICANT.contains(&n.to_ascii_lowercase().as_str())
    })
}

/// A header value: visible ASCII, inner spaces, no surrounding blanks.
fn value() -> impl Strategy<Value = String> {
    "[!-~]([ -~]{0,60}[!-~])?"
}

/// Extra header lines, at most `n`.
fn extra_headers(n: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        (extra_name(), value()).prop_map(|(n, v)| format!("{n}: {v}\r\n")),
        0..=n,
    )
}

/// A valid `Sec-WebSocket-Key`: 16 random bytes in base64 (the last
/// character before `==` carries only 2 bits).
fn key() -> impl Strategy<Value = String> {
    ("[A-Za-z0-9+/]{21}", "[AQgw]").prop_map(|(a, b)| format!("{a}{b}=="))
}

/// A valid upgrade request head: the required headers in any letter case
/// and order, mixed with up to `extra` other headers.
fn upgrade_head(extra: usize) -> impl Strategy<Value = (String, String)> {
    let connection = select(vec![
        "Upgrade",
        "upgrade",
        "keep-alive, Upgrade",
        "Upgrade, keep-alive",
        "keep-alive,UPGRADE",
    ]);
    (
        any_case("Host"),
        any_case("Upgrade"),
        any_case("websocket"),
        any_case("Connection"),
        connection,
        any_case("Sec-WebSocket-Key"),
        key(),
        any_case("Sec-WebSocket-Version"),
        extra_headers(extra),
        "/(\\?[a-z0-9=&]{0,20})?",
    )
        .prop_flat_map(
            |(
                host,
                upgrade,
                websocket,
                conn,
                conn_value,
                key_name,
                key,
                version,
                extra,
                target,
            )| {
                let mut lines = vec![
                    format!("{host}: localhost:8080\r\n"),
                    format!("{upgrade}: {websocket}\r\n"),
                    format!("{conn}: {conn_value}\r\n"),
                    format!("{key_name}: {key}\r\n"),
                    format!("{version}: 13\r\n"),
                ];
                lines.extend(extra);
                (Just(lines).prop_shuffle(), Just(key), Just(target))
            },
        )
        .prop_map(|(lines, key, target)| {
            (
                format!("GET {target} HTTP/1.1\r\n{}\r\n", lines.concat()),
                key,
            )
        })
}

/// A valid plain GET head for one of the resources.
fn get_head() -> impl Strategy<Value = String> {
    (select(vec!["/", "/healthz", "/metrics"]), extra_headers(20)).prop_map(|(path, extra)| {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{}\r\n", extra.concat())
    })
}

/// `head` with the value of header `name` (any case) replaced.
fn with_header_value(head: &str, name: &str, value: &str) -> String {
    head.split_inclusive("\r\n")
        .map(|line| match line.split_once(':') {
            Some((n, _)) if n.eq_ignore_ascii_case(name) => format!("{n}: {value}\r\n"),
            _ => line.to_owned(),
        })
        .collect()
}

/// `head` with an `Origin` header added at the end.
fn with_origin(head: &str, origin: &str) -> String {
    head.replacen("\r\n\r\n", &format!("\r\nOrigin: {origin}\r\n\r\n"), 1)
}

/// A URI scheme, usually http or https, in any letter case.
fn scheme() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec!["http", "https"]).prop_map(str::to_owned),
        1 => "[a-zA-Z][a-zA-Z0-9+.-]{0,8}",
    ]
}

/// A DNS name of two to four labels, the last not numeric (else it is
/// read as an IPv4 address).
fn dns_name() -> impl Strategy<Value = String> {
    (
        prop::collection::vec("[a-z0-9_]([a-z0-9_-]{0,12}[a-z0-9_])?", 1..=3),
        "[a-z][a-z0-9-]{0,5}",
    )
        .prop_map(|(mut labels, tld)| {
            labels.push(tld);
            labels.join(".")
        })
}

/// A host as browsers serialise it: a DNS name, IPv4, or bracketed IPv6.
fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => dns_name(),
        1 => any::<[u8; 4]>().prop_map(|a| std::net::Ipv4Addr::from(a).to_string()),
        1 => any::<[u16; 8]>().prop_map(|a| format!("[{}]", std::net::Ipv6Addr::from(a))),
    ]
}

/// An origin with a DNS host, as (origin, host, the host's parent domain).
fn dns_origin() -> impl Strategy<Value = (String, String, String)> {
    (
        scheme(),
        "[a-z0-9]{1,10}",
        dns_name(),
        prop::option::of(1u16..),
    )
        .prop_map(|(scheme, label, domain, port)| {
            let host = format!("{label}.{domain}");
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            (format!("{scheme}://{host}{port}"), host, domain)
        })
}

/// A `Content-Length` value that is not `1*DIGIT` in canonical form,
/// though lenient parsers (Rust's `str::trim` and `parse`, for one) read
/// many of them as a number.
fn not_canonical_digits() -> impl Strategy<Value = String> {
    let unicode_space = select(vec![
        "\u{a0}", "\u{3000}", "\u{2009}", "\u{85}", "\u{feff}", "\u{200b}", "\u{1680}",
    ]);
    let other_digit = select(vec![
        "\u{665}",
        "\u{ff15}",
        "\u{96b}",
        "\u{9e6}",
        "\u{1d7d3}",
    ]);
    prop_oneof![
        "[+-][0-9]{1,5}",
        "0[0-9]{1,5}",
        (unicode_space, "[0-9]{1,5}", any::<bool>()).prop_map(|(sp, d, before)| if before {
            format!("{sp}{d}")
        } else {
            format!("{d}{sp}")
        }),
        ("[0-9]{0,3}", other_digit, "[0-9]{0,3}").prop_map(|(a, d, b)| format!("{a}{d}{b}")),
        "[1-9][0-9]{0,3}[ \t]{1,3}[0-9]{1,3}",
        "0[xX][0-9a-f]{1,4}|[0-9]{1,3}[a-fA-F]",
        "[0-9]{1,3}[.e,][0-9]{1,3}|[0-9], [0-9]",
        "[1-9][0-9]{20,25}",
        "[ \t]{0,3}",
    ]
}

/// Checks what holds of any decision, whatever the input.
fn consistent(buf: &[u8], cfg: &RouteConfig, phase: Phase) -> Result<Route, TestCaseError> {
    let decided = route(buf, cfg, phase);
    match &decided {
        Route::Incomplete => prop_assert!(buf.len() < MAX_HEAD_LEN),
        Route::Upgrade { response, .. } => {
            prop_assert!(response.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
        }
        Route::Get { head_len, .. } | Route::Publish { head_len, .. } => {
            prop_assert!(*head_len > 0 && *head_len <= buf.len().min(MAX_HEAD_LEN));
        }
        Route::Reject(status, reason) => {
            prop_assert!((400..600).contains(&status.code()));
            prop_assert!(!reason.is_empty() && !reason.contains('\n'));
        }
    }
    prop_assert_eq!(&route(buf, cfg, phase), &decided, "not a pure function");
    Ok(decided)
}

/// Builds an upgrade with a tungstenite client's key and checks the
/// accept key in the response.
fn assert_upgrades(head: &str, key: &str, cfg: &RouteConfig) -> Result<(), TestCaseError> {
    match route(head.as_bytes(), cfg, Phase::Serving) {
        Route::Upgrade { response, .. } => {
            let response = String::from_utf8(response).unwrap();
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let line = format!("\r\nSec-WebSocket-Accept: {accept}\r\n");
            prop_assert!(response.contains(&line), "{}", response);
            Ok(())
        }
        other => Err(TestCaseError::fail(format!("{head:?} routed to {other:?}"))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..12_000)) {
        consistent(&buf, &config(), Phase::Serving)?;
    }

    #[test]
    fn request_like_bytes_never_panic(
        method in select(vec!["GET", "HEAD", "POST", "PUT", "G\u{0}T", ""]),
        target in "[ -~]{0,30}",
        version in select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 x", ""]),
        lines in prop::collection::vec(
            prop_oneof![
                (extra_name(), value()).prop_map(|(n, v)| format!("{n}: {v}")),
                (select(SIGNIFICANT.to_vec()), value()).prop_map(|(n, v)| format!("{n}: {v}")),
                "[\\x00-\\xff]{0,40}",
            ],
            0..80,
        ),
        eol in select(vec!["\r\n", "\n", "\r"]),
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut buf = format!("{method} {target} {version}{eol}{}{eol}", lines.join(eol))
            .into_bytes();
        buf.extend(tail);
        let strict = RouteConfig {
            allow_origins: vec!["*.example.com".into()],
            require_origin: true,
            ..config()
        };
        for (cfg, phase) in [
            (config(), Phase::Serving),
            (RouteConfig::default(), Phase::Serving),
            (strict, Phase::Draining),
        ] {
            consistent(&buf, &cfg, phase)?;
        }
    }

    #[test]
    fn a_valid_upgrade_upgrades_whatever_else_it_carries((head, key) in upgrade_head(50)) {
        assert_upgrades(&head, &key, &config())?;
    }

    #[test]
    fn any_truncation_of_a_valid_head_waits_for_more(
        (head, _) in upgrade_head(20),
        get in get_head(),
        cut in any::<prop::sample::Index>(),
    ) {
        for h in [head, get] {
            let at = cut.index(h.len());
            let part = &h.as_bytes()[..at];
            prop_assert_eq!(route(part, &config(), Phase::Serving), Route::Incomplete, "{:?}", &h[..at]);
        }
    }

    #[test]
    fn bytes_after_an_upgrade_head_are_refused(
        (head, _) in upgrade_head(10),
        tail in prop::collection::vec(any::<u8>(), 1..200),
    ) {
        let mut buf = head.into_bytes();
        buf.extend(tail);
        prop_assert_eq!(
            route(&buf, &config(), Phase::Serving),
            Route::Reject(Status::BadRequest, "data sent before the handshake completed")
        );
    }

    #[test]
    fn bytes_after_a_get_head_are_left_for_the_next_request(
        head in get_head(),
        tail in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut buf = head.clone().into_bytes();
        buf.extend(tail);
        match route(&buf, &config(), Phase::Serving) {
            Route::Get { head_len, body, keep_alive, .. } => {
                prop_assert_eq!(head_len, head.len());
                prop_assert!(body && keep_alive);
            }
            other => prop_assert!(false, "{:?} routed to {:?}", head, other),
        }
    }

    #[test]
    fn up_to_64_headers_are_read_and_more_are_431(n in 1usize..200) {
        let lines: String = (1..n).map(|i| format!("X-{i}: v\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\nHost: x\r\n{lines}\r\n");
        let decided = route(head.as_bytes(), &config(), Phase::Serving);
        if n <= MAX_HEADERS {
            prop_assert!(matches!(decided, Route::Get { .. }), "{} headers: {:?}", n, decided);
        } else {
            prop_assert_eq!(decided, Route::Reject(Status::HeadersTooLarge, "too many headers"));
        }
    }

    #[test]
    fn a_head_past_8_kib_is_431_complete_or_not(
        pad in (MAX_HEAD_LEN + 1)..(3 * MAX_HEAD_LEN),
        complete in any::<bool>(),
    ) {
        let mut head = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n", "p".repeat(pad));
        if complete {
            head.push_str("\r\n");
        }
        prop_assert_eq!(
            route(head.as_bytes(), &config(), Phase::Serving),
            Route::Reject(Status::HeadersTooLarge, "request head too large")
        );
    }

    #[test]
    fn a_websocket_version_other_than_13_is_426(
        (head, _) in upgrade_head(5),
        version in "[0-9]{1,4}|[a-z]{1,5}",
    ) {
        prop_assume!(version != "13");
        let head = with_header_value(&head, "sec-websocket-version", &version);
        prop_assert_eq!(
            route(head.as_bytes(), &config(), Phase::Serving),
            Route::Reject(Status::UpgradeRequired, "only WebSocket version 13 is supported")
        );
    }

    #[test]
    fn a_content_length_on_a_get_is_refused_unless_zero(value in "[ -~]{0,24}") {
        let head = format!("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n");
        // Digits only, after optional whitespace (SP, HTAB) is trimmed.
        let digits = value.trim_matches([' ', '\t']);
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        let expected = match digits.parse::<u64>() {
            Ok(0) if canonical => None,
            Ok(_) if canonical => Some("a GET request has no body"),
            _ => Some("invalid Content-Length"),
        };
        match (route(head.as_bytes(), &config(), Phase::Serving), expected) {
            (Route::Get { .. }, None) => {}
            (Route::Reject(Status::BadRequest, why), Some(want)) => prop_assert_eq!(why, want),
            // httparse refuses some values (e.g. with control characters) itself.
            (Route::Reject(Status::BadRequest, "malformed request head"), _) => {}
            (other, want) => prop_assert!(false, "{:?}: {:?}, expected {:?}", value, other, want),
        }
    }

    #[test]
    fn a_suffix_pattern_allows_exactly_its_subdomains(
        (head, key) in upgrade_head(5),
        label in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
        domain in "[a-z]{1,12}\\.[a-z]{2,6}",
        scheme in select(vec!["http", "https"]),
        port in prop::option::of(1u16..),
    ) {
        let pattern = format!("*.{domain}");
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        let allowed = [
            format!("{scheme}://{label}.{domain}{port}"),
            format!("{scheme}://{label}.{label}.{}{port}", domain.to_uppercase()),
        ];
        let refused = [
            format!("{scheme}://{domain}{port}"),
            format!("{scheme}://{label}{domain}{port}"),
            format!("{scheme}://{label}.{domain}.evil{port}"),
        ];
        let cfg = RouteConfig { allow_origins: vec![pattern], ..config() };
        let with_origin = |o: &str| with_origin(&head, o);
        for o in &allowed {
            prop_assert!(origin_allowed(o.as_bytes(), &cfg.allow_origins), "{}", o);
            assert_upgrades(&with_origin(o), &key, &cfg)?;
        }
        for o in &refused {
            prop_assert!(!origin_allowed(o.as_bytes(), &cfg.allow_origins), "{}", o);
            prop_assert_eq!(
                route(with_origin(o).as_bytes(), &cfg, Phase::Serving),
                Route::Reject(Status::Forbidden, "origin not allowed")
            );
        }
    }

    #[test]
    fn a_well_formed_origin_matches_its_exact_host_and_suffix_patterns(
        (head, key) in upgrade_head(5),
        scheme in scheme(),
        host in host(),
        port in prop::option::of(1u16..),
        other_port in 1u16..,
    ) {
        prop_assume!(port != Some(other_port));
        let at = |p: Option<u16>| p.map(|p| format!(":{p}")).unwrap_or_default();
        let origin = format!("{scheme}://{host}{}", at(port));
        let yes = |p: &str| origin_allowed(origin.as_bytes(), &[p.to_owned()]);
        // The exact origin, in any case, written as a URL or not.
        prop_assert!(yes(&origin), "{} / itself", origin);
        prop_assert!(yes(&origin.to_ascii_uppercase()), "{}", origin);
        prop_assert!(yes(&format!("{origin}/")), "{}", origin);
        // Another port, or none where there is one, is another origin.
        let moved = format!("{scheme}://{host}{}", at(Some(other_port)));
        prop_assert!(!yes(&moved), "{} / {}", origin, moved);
        if port.is_some() {
            prop_assert!(!yes(&format!("{scheme}://{host}")), "{}", origin);
        }
        // The host, whatever the scheme and port; not another host.
        prop_assert!(yes(&host), "{} / {}", origin, host);
        prop_assert!(yes(&host.to_ascii_uppercase()), "{} / {}", origin, host);
        prop_assert!(!yes(&format!("x{host}")), "{}", origin);
        // A suffix pattern: any proper parent domain, never the host itself.
        prop_assert!(!yes(&format!("*.{host}")), "{}", origin);
        if let Some((_, parent)) = host.split_once('.').filter(|_| !host.starts_with('[')) {
            prop_assert!(yes(&format!("*.{parent}")), "{} / *.{}", origin, parent);
        }
        let exact = RouteConfig { allow_origins: vec![origin.clone()], ..config() };
        let head = with_origin(&head, &origin);
        assert_upgrades(&head, &key, &exact)?;
        let elsewhere = RouteConfig { allow_origins: vec!["*.elsewhere.example".into()], ..config() };
        prop_assert_eq!(
            route(head.as_bytes(), &elsewhere, Phase::Serving),
            Route::Reject(Status::Forbidden, "origin not allowed")
        );
    }

    #[test]
    fn anything_but_scheme_host_and_port_matches_no_pattern(
        (head, _) in upgrade_head(5),
        (origin, host, domain) in dns_origin(),
        evil in dns_name(),
        junk in select(vec![
            "?", "#", "/", "@", "\\", " ", "\t", "%2e", "?x", "#x", "/path", "/?x=1",
            "\u{a0}", "\u{3000}", "\u{e9}", "\u{ff0e}", "\u{200b}",
        ]),
        tail in select(vec!["/", "/path", "?", "?x", "#", "#x", "@", ":", "\u{a0}", "%20", "\\"]),
        form in 0usize..6,
        at in any::<prop::sample::Index>(),
        port in select(vec!["0", "65536", "99999", "", "080", "+80", " 80", "8a", "80:80", "0x50"]),
    ) {
        let (scheme, rest) = origin.split_once("://").unwrap();
        let not_an_origin = match form {
            // The issue's forms: the raw text ends with the allowed suffix.
            0 => format!("{scheme}://{evil}{junk}.{domain}"),
            // Anything after the authority, a trailing slash included
            // (whitespace there is optional whitespace, not part of it).
            1 => format!("{origin}{tail}"),
            // Userinfo: the host is right, but an origin has none.
            2 => format!("{scheme}://{evil}@{rest}"),
            // Junk anywhere inside (the edges are optional whitespace).
            3 => {
                let i = 1 + at.index(origin.len() - 1);
                format!("{}{junk}{}", &origin[..i], &origin[i..])
            }
            // A port that is not 1 to 65535 in canonical digits.
            4 => format!("{scheme}://{host}:{port}"),
            _ => "null".to_owned(),
        };
        let patterns = vec![origin.clone(), host.clone(), format!("*.{domain}")];
        prop_assert!(
            !origin_allowed(not_an_origin.as_bytes(), &patterns),
            "{:?} allowed by {:?}", not_an_origin, patterns
        );
        let cfg = RouteConfig { allow_origins: patterns, ..config() };
        prop_assert_eq!(
            route(with_origin(&head, &not_an_origin).as_bytes(), &cfg, Phase::Serving),
            Route::Reject(Status::Forbidden, "origin not allowed"),
            "{:?}", not_an_origin
        );
    }

    #[test]
    fn two_origin_headers_are_400_whatever_their_values(
        (head, _) in upgrade_head(5),
        names in (any_case("Origin"), any_case("Origin")),
        first in prop_oneof![dns_origin().prop_map(|o| o.0), value()],
        second in prop_oneof![dns_origin().prop_map(|o| o.0), value()],
        same in any::<bool>(),
        patterns in select(vec![vec![], vec!["*.example.com".to_owned()]]),
    ) {
        let second = if same { first.clone() } else { second };
        let lines = format!("{}: {first}\r\n{}: {second}\r\n", names.0, names.1);
        let head = head.replacen("\r\n\r\n", &format!("\r\n{lines}\r\n"), 1);
        for require_origin in [false, true] {
            let cfg = RouteConfig { allow_origins: patterns.clone(), require_origin, ..config() };
            prop_assert_eq!(
                route(head.as_bytes(), &cfg, Phase::Serving),
                Route::Reject(Status::BadRequest, "repeated Origin")
            );
        }
    }

    #[test]
    fn a_repeated_host_key_or_version_is_400(
        (head, key) in upgrade_head(5),
        get in get_head(),
        other_key in key(),
        which in 0usize..3,
        same in any::<bool>(),
        first in any::<bool>(),
    ) {
        let (name, value, other, why) = [
            ("host", "localhost:8080", "evil.example", "repeated Host"),
            ("sec-websocket-key", key.as_str(), other_key.as_str(), "repeated Sec-WebSocket-Key"),
            ("sec-websocket-version", "13", "8", "repeated Sec-WebSocket-Version"),
        ][which];
        let again = format!("{name}: {}\r\n", if same { value } else { other });
        // Before or after the original line.
        let repeat = |h: &str| if first {
            h.replacen("\r\n", &format!("\r\n{again}"), 1)
        } else {
            h.replacen("\r\n\r\n", &format!("\r\n{again}\r\n"), 1)
        };
        prop_assert_eq!(
            route(repeat(&head).as_bytes(), &config(), Phase::Serving),
            Route::Reject(Status::BadRequest, why),
            "{:?}", repeat(&head)
        );
        if which == 0 {
            // Not only on upgrades: RFC 9112 §3.2.
            prop_assert_eq!(
                route(repeat(&get).as_bytes(), &config(), Phase::Serving),
                Route::Reject(Status::BadRequest, why)
            );
        }
    }

    #[test]
    fn a_content_length_that_is_not_canonical_digits_is_400(value in not_canonical_digits()) {
        for head in [
            format!("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n"),
            format!(
                "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\n\
                 Content-Length: {value}\r\n\r\n"
            ),
        ] {
            prop_assert_eq!(
                route(head.as_bytes(), &config(), Phase::Serving),
                Route::Reject(Status::BadRequest, "invalid Content-Length"),
                "{:?}", value
            );
        }
    }

    #[test]
    fn canonical_content_length_digits_are_read_up_to_the_limit(
        n in prop_oneof![0u64..=2048, any::<u64>()],
        before in "[ \t]{0,2}",
        after in "[ \t]{0,2}",
    ) {
        let value = format!("{before}{n}{after}");
        let publish = format!(
            "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\n\
             Content-Length: {value}\r\n\r\n"
        );
        match route(publish.as_bytes(), &config(), Phase::Serving) {
            Route::Publish { body_len, .. } => prop_assert_eq!(body_len as u64, n),
            Route::Reject(Status::PayloadTooLarge, _) => prop_assert!(n > 1024),
            other => prop_assert!(false, "{:?}: {:?}", value, other),
        }
        let get = format!("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n");
        match route(get.as_bytes(), &config(), Phase::Serving) {
            Route::Get { .. } => prop_assert_eq!(n, 0),
            Route::Reject(Status::BadRequest, "a GET request has no body") => prop_assert!(n > 0),
            other => prop_assert!(false, "{:?}: {:?}", value, other),
        }
    }

    #[test]
    fn while_draining_nothing_upgrades((head, _) in upgrade_head(10)) {
        prop_assert_eq!(
            route(head.as_bytes(), &config(), Phase::Draining),
            Route::Reject(Status::Unavailable, "server shutting down")
        );
    }
}
