//! Just enough HTTP/1.x for health probes: parse a request head, write a response. Pure
//! functions over bytes (fuzzed below), so the listener thread never panics on what a client
//! sends: anything it cannot read as a `GET`/`HEAD` without a body is a 400 and the connection
//! is closed.

use super::Report;

/// The longest request head accepted (request line and headers); probes send about 100 bytes.
pub(crate) const MAX_HEAD: usize = 8 * 1024;

/// One request head, parsed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// `HEAD` (answered without a body) rather than `GET`.
    pub(crate) head_only: bool,
    /// The path, without a query string.
    pub(crate) path: String,
    /// The client asked to keep the connection open (HTTP/1.1 unless `Connection: close`,
    /// HTTP/1.0 only with `Connection: keep-alive`).
    pub(crate) keep_alive: bool,
}

/// Why a head was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not HTTP/1.x, or malformed: 400.
    BadRequest(&'static str),
    /// Another method: 405 (the connection stays usable when it has no body).
    Method { keep_alive: bool },
}

/// What the start of `buffer` holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A complete head of `len` bytes.
    Request(Request, usize),
    /// A complete head that is refused, `len` bytes long.
    Refused(Refusal, usize),
    /// More bytes are needed (and fewer than [`MAX_HEAD`] have come).
    Incomplete,
}

/// Parses the request head at the start of `buffer`.
pub(crate) fn parse(buffer: &[u8]) -> Parsed {
    let Some(end) = find_head_end(buffer) else {
        return if buffer.len() >= MAX_HEAD {
            Parsed::Refused(Refusal::BadRequest("request head too long"), buffer.len())
        } else {
            Parsed::Incomplete
        };
    };
    let len = end + 4;
    if end > MAX_HEAD {
        return Parsed::Refused(Refusal::BadRequest("request head too long"), len);
    }
    match parse_head(&buffer[..end]) {
        Ok(request) => Parsed::Request(request, len),
        Err(refusal) => Parsed::Refused(refusal, len),
    }
}

fn find_head_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(4).position(|w| w == b"\r\n\r\n")
}

fn parse_head(head: &[u8]) -> Result<Request, Refusal> {
    let head = std::str::from_utf8(head).map_err(|_| Refusal::BadRequest("the request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Refusal::BadRequest("malformed request line"));
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(Refusal::BadRequest("not HTTP/1.0 or HTTP/1.1")),
    };
    // origin-form (`/ready`) or absolute-form (`http://host:port/ready`, as proxies send).
    let path = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None if target.starts_with('/') => target,
        None => return Err(Refusal::BadRequest("the request target is not a path")),
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Refusal::BadRequest("malformed method"));
    }
    let mut keep_alive = http11;
    let mut has_body = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Refusal::BadRequest("malformed header line"));
        };
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(Refusal::BadRequest("malformed header name"));
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") || (name.eq_ignore_ascii_case("content-length") && value != "0")
        {
            has_body = true;
        }
    }
    if has_body {
        // A probe has no body; reading one to keep the connection is not worth the code.
        return Err(Refusal::BadRequest("a request body is not accepted here"));
    }
    match method {
        "GET" | "HEAD" => {
            Ok(Request { head_only: method == "HEAD", path: path.split(['?', '#']).next().unwrap_or("").to_string(), keep_alive })
        }
        _ => Err(Refusal::Method { keep_alive }),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The bytes of a response carrying `report`, with `Connection: close` unless `keep_alive`.
pub(crate) fn response(report: &Report, head_only: bool, keep_alive: bool, extra_header: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{extra_header}{}\r\n",
        report.status,
        reason(report.status),
        report.content_type,
        report.body.len(),
        if keep_alive { "" } else { "Connection: close\r\n" },
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(report.body.as_bytes());
    }
    out
}

/// The response to a refused head.
pub(crate) fn refusal_response(refusal: &Refusal) -> (Vec<u8>, bool) {
    let text = |status, body: &str| Report { status, content_type: "text/plain; charset=utf-8", body: format!("{body}\n") };
    match refusal {
        Refusal::BadRequest(why) => (response(&text(400, why), false, false, ""), false),
        Refusal::Method { keep_alive } => {
            let report = text(405, "only GET and HEAD are answered here");
            (response(&report, false, *keep_alive, "Allow: GET, HEAD\r\n"), *keep_alive)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Parsed {
        parse(text.as_bytes())
    }

    #[test]
    fn probes_as_kubernetes_haproxy_and_curl_send_them() {
        let parsed = request("GET /ready HTTP/1.1\r\nHost: 10.0.0.1:8081\r\nUser-Agent: kube-probe/1.30\r\nAccept: */*\r\nConnection: close\r\n\r\n");
        let Parsed::Request(r, _) = parsed else { panic!("{parsed:?}") };
        assert_eq!((r.path.as_str(), r.head_only, r.keep_alive), ("/ready", false, false));
        let Parsed::Request(r, len) = request("HEAD /health?x=1 HTTP/1.0\r\n\r\nGET") else { panic!() };
        assert_eq!((r.path.as_str(), r.head_only, r.keep_alive, len), ("/health", true, false, 29));
        let Parsed::Request(r, _) = request("GET http://h:1/live HTTP/1.1\r\n\r\n") else { panic!() };
        assert_eq!((r.path.as_str(), r.keep_alive), ("/live", true));
        let Parsed::Request(r, _) = request("GET /live HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n") else { panic!() };
        assert!(r.keep_alive);
    }

    #[test]
    fn bad_heads_are_refused_and_partial_ones_wait() {
        assert_eq!(request("GET /ready HTTP/1.1\r\nHost: x\r\n"), Parsed::Incomplete);
        for bad in [
            "GET /ready\r\n\r\n",
            "GET /ready HTTP/2.0\r\n\r\n",
            "GET  /ready HTTP/1.1\r\n\r\n",
            "get /ready HTTP/1.1\r\n\r\n",
            "GET ready HTTP/1.1\r\n\r\n",
            "GET /ready HTTP/1.1\r\nno colon\r\n\r\n",
            "GET /ready HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            "GET /ready HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "\u{0}\u{1}\r\n\r\n",
        ] {
            assert!(matches!(request(bad), Parsed::Refused(Refusal::BadRequest(_), _)), "{bad:?}");
        }
        assert!(matches!(request("POST /ready HTTP/1.1\r\n\r\n"), Parsed::Refused(Refusal::Method { keep_alive: true }, _)));
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(parse(long.as_bytes()), Parsed::Refused(Refusal::BadRequest(_), _)));
    }

    #[test]
    fn responses_carry_length_and_connection() {
        let report = Report { status: 503, content_type: "text/plain; charset=utf-8", body: "not ready: DRAINING\n".into() };
        let text = String::from_utf8(response(&report, false, false, "")).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{text}");
        assert!(text.contains("Content-Length: 20\r\n") && text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nnot ready: DRAINING\n"), "{text}");
        let head = String::from_utf8(response(&report, true, true, "")).unwrap();
        assert!(head.ends_with("Cache-Control: no-store\r\n\r\n"), "{head}");
    }

    #[test]
    fn any_bytes_parse_without_panicking() {
        // A cheap deterministic fuzz: every prefix of a mix of valid and hostile heads.
        let corpus = b"GET /ready HTTP/1.1\r\nConnection: close, keep-alive\r\n\r\nPOST x\r\n\r\n\xff\xfe:\r\n\r\n";
        for end in 0..corpus.len() {
            for start in 0..end {
                let _ = parse(&corpus[start..end]);
            }
        }
    }
}
