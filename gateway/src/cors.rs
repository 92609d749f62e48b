//! CORS for HTTP triggers, answered at the gateway as Lambda function URLs
//! answer it: a preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) never reaches the function, and the
//! function's answers to allowed origins carry the `Access-Control-*`
//! headers of the trigger's settings (replacing any the function set).

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use porchlight_api::function::Cors;

/// Whether `headers` make a CORS preflight of a request with `method`.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The preflight's answer: 200, with the `Access-Control-*` headers when
/// the origin, the method and every requested header are allowed, without
/// them (so the browser refuses) otherwise.
pub fn preflight(cors: &Cors, headers: &HeaderMap) -> Response {
    let mut response = StatusCode::OK.into_response();
    let h = response.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = allowed_origin(cors, headers) else {
        return response;
    };
    let method = text(headers, &header::ACCESS_CONTROL_REQUEST_METHOD);
    let method_ok = cors
        .allow_methods
        .iter()
        .any(|m| m == "*" || m.eq_ignore_ascii_case(&method));
    let requested: Vec<String> = text(headers, &header::ACCESS_CONTROL_REQUEST_HEADERS)
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    let headers_ok = requested.iter().all(|r| {
        cors.allow_headers
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(r))
    });
    if !method_ok || !headers_ok {
        return response;
    }
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    put(
        h,
        header::ACCESS_CONTROL_ALLOW_METHODS,
        &cors.allow_methods.join(", "),
    );
    if !requested.is_empty() {
        put(
            h,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            &requested.join(", "),
        );
    }
    if let Some(age) = cors.max_age {
        put(h, header::ACCESS_CONTROL_MAX_AGE, &age.to_string());
    }
    if cors.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    response
}

/// Puts the trigger's CORS headers on the answer to an allowed origin's
/// request (and takes away any the function set).
pub fn decorate(cors: &Cors, request: &HeaderMap, response: &mut Response) {
    let h = response.headers_mut();
    for name in [
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
    ] {
        h.remove(name);
    }
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = allowed_origin(cors, request) else {
        return;
    };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if !cors.expose_headers.is_empty() {
        put(
            h,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            &cors.expose_headers.join(", "),
        );
    }
    if cors.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

/// The `Access-Control-Allow-Origin` value for the request's origin: `*`
/// when any origin is allowed (and no credentials), else the origin itself
/// when listed; None when the request has no origin or it is not allowed.
fn allowed_origin(cors: &Cors, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    if cors.allow_origins.iter().any(|o| o == "*") && !cors.allow_credentials {
        return Some(HeaderValue::from_static("*"));
    }
    cors.allow_origins
        .iter()
        .any(|o| o.eq_ignore_ascii_case(text))
        .then(|| origin.clone())
}

fn text(headers: &HeaderMap, name: &HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn put(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors {
            allow_origins: vec!["https://app.example.com".into()],
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["content-type".into(), "x-api-key".into()],
            expose_headers: vec!["x-request-id".into()],
            max_age: Some(300),
            allow_credentials: true,
        }
    }

    fn request(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    fn get<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn an_allowed_preflight_gets_the_access_control_headers() {
        let h = request(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "Content-Type, X-Api-Key"),
        ]);
        assert!(is_preflight(&Method::OPTIONS, &h));
        assert!(!is_preflight(&Method::POST, &h));
        let r = preflight(&cors(), &h);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            get(&r, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(get(&r, "access-control-allow-methods"), Some("GET, POST"));
        assert_eq!(
            get(&r, "access-control-allow-headers"),
            Some("content-type, x-api-key")
        );
        assert_eq!(get(&r, "access-control-max-age"), Some("300"));
        assert_eq!(get(&r, "access-control-allow-credentials"), Some("true"));
    }

    #[test]
    fn a_refused_preflight_has_no_access_control_headers() {
        for h in [
            request(&[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "POST"),
            ]),
            request(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "DELETE"),
            ]),
            request(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "authorization"),
            ]),
        ] {
            let r = preflight(&cors(), &h);
            assert_eq!(get(&r, "access-control-allow-origin"), None, "{h:?}");
        }
    }

    #[test]
    fn answers_carry_the_triggers_headers_not_the_functions() {
        let mut r = StatusCode::OK.into_response();
        r.headers_mut()
            .insert("access-control-allow-origin", HeaderValue::from_static("*"));
        decorate(
            &cors(),
            &request(&[("origin", "https://app.example.com")]),
            &mut r,
        );
        assert_eq!(
            get(&r, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            get(&r, "access-control-expose-headers"),
            Some("x-request-id")
        );
        let mut r = StatusCode::OK.into_response();
        r.headers_mut()
            .insert("access-control-allow-origin", HeaderValue::from_static("*"));
        decorate(
            &cors(),
            &request(&[("origin", "https://evil.example")]),
            &mut r,
        );
        assert_eq!(
            get(&r, "access-control-allow-origin"),
            None,
            "the function's '*' is replaced"
        );
        let any = Cors {
            allow_origins: vec!["*".into()],
            ..Cors::default()
        };
        let mut r = StatusCode::OK.into_response();
        decorate(&any, &request(&[("origin", "https://x.example")]), &mut r);
        assert_eq!(get(&r, "access-control-allow-origin"), Some("*"));
    }
}
