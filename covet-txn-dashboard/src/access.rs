//! Who may ask: the `Host` a request names (against DNS rebinding), where a
//! request for data comes from (`Origin`, `Sec-Fetch-Site`), and the bearer
//! token, from the `Authorization` header or the cookie the page trades a
//! `?token=` for. Refusals close the connection when the dashboard serves
//! it itself; failed tokens are slowed and logged by `failures`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use subtle::ConstantTimeEq;

use crate::connection::Client;
use crate::state::{Shared, Token};

/// The cookie that carries the token after the page's first load.
pub(crate) const COOKIE: &str = "covet_txn_dashboard";
const REALM: &str = "Bearer realm=\"covet-txn dashboard\"";

/// Refuses requests that name a host the dashboard does not answer to: a
/// page on a rebound name (`attacker.example` resolving to 127.0.0.1) sends
/// its own name, which no one configured.
pub(crate) async fn check_host(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    if host_allowed(request.headers(), &shared.settings.allowed_hosts) {
        next.run(request).await
    } else {
        refuse(
            request.extensions().get::<Client>(),
            StatusCode::MISDIRECTED_REQUEST,
            "this dashboard does not answer to that Host: use its IP address or localhost, or \
             configure the name with Dashboard::allow_host",
        )
    }
}

/// Refuses requests for data from another site, then requests without the
/// token.
pub(crate) async fn check_data_request(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    if !same_origin(request.headers()) {
        return refuse(
            request.extensions().get::<Client>(),
            StatusCode::FORBIDDEN,
            "cross-origin requests are refused",
        );
    }
    let presented = presented_token(request.headers());
    // The client is cloned out: a request cannot be held across an await
    // (its body is not `Sync`).
    let client = request.extensions().get::<Client>().cloned();
    match authorise(&shared, client, request.uri().path(), presented.as_deref()).await {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal,
    }
}

/// The token a request shows, in its `Authorization` header or cookie.
pub(crate) fn presented_token(headers: &HeaderMap) -> Option<String> {
    bearer(headers).or_else(|| cookie(headers))
}

/// Checks `presented` against the token: `Ok` marks the connection as
/// trusted; `Err` is the 401 to send, after the delay that repeated
/// failures earn.
pub(crate) async fn authorise(
    shared: &Shared,
    client: Option<Client>,
    path: &str,
    presented: Option<&str>,
) -> Result<(), Response> {
    let accepted = match &shared.token {
        Token::Open => true,
        Token::Required(token) => presented.is_some_and(|presented| matches(presented, token)),
        Token::Locked => false,
    };
    if accepted {
        if let Some(client) = &client {
            client.trust();
        }
        return Ok(());
    }
    // A mounted dashboard does not know its clients' addresses: their
    // failures are counted together.
    let peer = client.as_ref().map(|client| client.peer().ip());
    let delay = shared.failures.record(peer, path);
    let challenge = if presented.is_some() {
        format!("{REALM}, error=\"invalid_token\"")
    } else {
        REALM.to_owned()
    };
    let mut response = refuse(
        client.as_ref(),
        StatusCode::UNAUTHORIZED,
        "a bearer token is required: send `Authorization: Bearer <token>`, or open the page once \
         with `?token=<token>`",
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    Err(response)
}

/// A refusal; on a connection the dashboard serves itself, the connection
/// closes after it, so a client that failed holds no socket.
pub(crate) fn refuse(client: Option<&Client>, status: StatusCode, text: &'static str) -> Response {
    let mut response = (status, text).into_response();
    if client.is_some() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Compares in time that depends on the expected token's length only: every
/// presented value, of any length, walks the whole expected token, so
/// neither where a guess goes wrong nor how long the token is shows in the
/// answer's timing. `subtle` does the byte comparisons; its own slice
/// comparison returns early on a length mismatch, which is why it is not
/// used directly.
fn matches(presented: &str, expected: &str) -> bool {
    let (presented, expected) = (presented.as_bytes(), expected.as_bytes());
    let mut same = (presented.len() as u64).ct_eq(&(expected.len() as u64));
    for (index, byte) in expected.iter().enumerate() {
        // Indexing the presented value depends only on its own length,
        // which the client knows already.
        let theirs = presented.get(index).copied().unwrap_or(!byte);
        same &= theirs.ct_eq(byte);
    }
    same.into()
}

/// The token of an `Authorization: Bearer` header; the scheme is matched in
/// any case (RFC 7235), and spaces around the token are dropped.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// The token of the dashboard's cookie.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then(|| percent_decode_str(value).decode_utf8_lossy().into_owned())
        })
}

/// The `Set-Cookie` value that carries `token` from now on: not readable by
/// scripts, never sent by another site, and scoped by the browser to the
/// folder of the page (no `Path`), wherever the dashboard is mounted.
pub(crate) fn token_cookie(token: &str, secure: bool) -> Option<HeaderValue> {
    let mut cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict",
        utf8_percent_encode(token, NON_ALPHANUMERIC)
    );
    if secure {
        cookie.push_str("; Secure");
    }
    HeaderValue::from_str(&cookie).ok()
}

/// Whether a proxy in front says the client came over HTTPS.
pub(crate) fn forwarded_https(headers: &HeaderMap) -> bool {
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("https"));
    proto
        || headers
            .get(header::FORWARDED)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| {
                value
                    .split([';', ','])
                    .any(|part| part.trim().eq_ignore_ascii_case("proto=https"))
            })
}

/// IP literals and `localhost` cannot be rebound: a page can only be on
/// them if it is served by this machine. Any other name must be allowed
/// by configuration. A request without `Host` (HTTP/1.0 tools) did not come
/// from a browser, which always sends it.
fn host_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let Some((name, _)) = split_authority(host) else {
        return false;
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || allowed.contains(&name)
}

/// A data request from a page of another origin, as the browser reports it:
/// `Sec-Fetch-Site` when sent, and `Origin`, which browsers add to
/// cross-origin requests (and to no same-origin GET).
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(Ok(host))) = (
        origin.to_str(),
        headers.get(header::HOST).map(|host| host.to_str()),
    ) else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false; // "null", from a sandboxed page or a file
    };
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    let normalise = |authority: &str| {
        split_authority(authority)
            .map(|(name, port)| (name.to_ascii_lowercase(), port.unwrap_or(default_port)))
    };
    normalise(authority).is_some_and(|origin| Some(origin) == normalise(host))
}

/// `name[:port]` or `[v6]:port` into the name (brackets dropped) and port.
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (name, rest) = rest.split_once(']')?;
        (name, rest.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(port) => Some(port.parse().ok()?),
        None => None,
    };
    (!name.is_empty()).then_some((name, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn tokens_match_only_when_equal_whatever_their_length() {
        assert!(matches("secret", "secret"));
        assert!(!matches("secreT", "secret"));
        assert!(!matches("secre", "secret"));
        assert!(!matches("secrets", "secret"));
        assert!(!matches("", "secret"));
        assert!(!matches("secret\0", "secret"));
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for value in ["Bearer abc", "bearer abc", "BEARER  abc ", "bEaReR abc"] {
            let map = headers(&[("authorization", value)]);
            assert_eq!(bearer(&map).as_deref(), Some("abc"), "{value}");
        }
        assert_eq!(bearer(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(bearer(&headers(&[("authorization", "Bearerabc")])), None);
    }

    #[test]
    fn the_cookie_round_trips_any_token() {
        let value = token_cookie("t0ken+with/odd=chars; x", false).expect("a header value");
        let value = value.to_str().expect("ASCII");
        assert!(value.ends_with("; HttpOnly; SameSite=Strict"), "{value}");
        let pair = value.split(';').next().expect("name=value");
        let mut map = HeaderMap::new();
        map.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {pair}")).expect("valid"),
        );
        assert_eq!(cookie(&map).as_deref(), Some("t0ken+with/odd=chars; x"));
    }

    #[test]
    fn hosts_are_ip_literals_localhost_or_allowed_names() {
        let allowed = ["dash.example.com".to_owned()];
        for host in [
            "127.0.0.1:7777",
            "[::1]:7777",
            "localhost:7777",
            "LOCALHOST",
            "10.1.2.3",
            "Dash.Example.com:443",
        ] {
            let map = headers(&[("host", host)]);
            assert!(host_allowed(&map, &allowed), "{host}");
        }
        for host in ["attacker.example:7777", "127.0.0.1.nip.io", "", ":80"] {
            let map = headers(&[("host", host)]);
            assert!(!host_allowed(&map, &allowed), "{host}");
        }
    }

    #[test]
    fn foreign_origins_are_told_apart_from_the_dashboard_s_own() {
        let host = ("host", "127.0.0.1:7777");
        assert!(same_origin(&headers(&[host])));
        assert!(same_origin(&headers(&[
            host,
            ("origin", "http://127.0.0.1:7777")
        ])));
        assert!(same_origin(&headers(&[
            host,
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://127.0.0.1:8080")
        ])));
        assert!(!same_origin(&headers(&[host, ("origin", "null")])));
        assert!(!same_origin(&headers(&[
            host,
            ("sec-fetch-site", "cross-site")
        ])));
        let proxied = [
            ("host", "dash.example.com"),
            ("origin", "https://dash.example.com"),
        ];
        assert!(same_origin(&headers(&proxied)));
    }
}
