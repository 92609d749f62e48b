//! HTTP requests to API Gateway proxy events (payload format 1.0 and 2.0) and
//! handler results back to HTTP responses. Pure: no I/O, time passed in.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http::HeaderMap;
use porchlight_api::function::PayloadFormat;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::{decode_query_component, request_time};

/// The parts of an HTTP request that become an event.
#[derive(Debug, Clone)]
pub struct HttpRequestParts<'a> {
    /// Method, e.g. `POST`.
    pub method: &'a str,
    /// Path below the function's prefix, starting with `/` (e.g. `/users`).
    pub path: &'a str,
    /// The `{proxy+}` value (path without the leading `/`), when below the prefix.
    pub proxy: Option<&'a str>,
    /// Raw query string without `?`.
    pub query: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Body bytes.
    pub body: &'a [u8],
    /// Client address.
    pub source_ip: &'a str,
    /// Gateway request id.
    pub request_id: &'a str,
    /// `HTTP/1.1` etc.
    pub protocol: &'a str,
    /// Arrival time.
    pub now: OffsetDateTime,
}

/// An HTTP response built from a handler's result.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Headers in order (names may repeat).
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl HttpReply {
    /// API Gateway's answer to a malformed result or a function error.
    pub fn internal_server_error() -> Self {
        HttpReply {
            status: 502,
            headers: vec![("content-type".into(), "application/json".into())],
            body: br#"{"message":"Internal server error"}"#.to_vec(),
        }
    }
}

fn body_field(body: &[u8]) -> (Value, bool) {
    if body.is_empty() {
        return (Value::Null, false);
    }
    match std::str::from_utf8(body) {
        Ok(s) => (Value::String(s.to_string()), false),
        Err(_) => (Value::String(B64.encode(body)), true),
    }
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode_query_component(k), decode_query_component(v))
        })
        .collect()
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Builds the event for a function's payload format.
pub fn request_event(format: PayloadFormat, req: &HttpRequestParts<'_>) -> Value {
    match format {
        PayloadFormat::V1 => request_v1(req),
        PayloadFormat::V2 => request_v2(req),
    }
}

/// Payload format 1.0 (REST API proxy integration).
pub fn request_v1(req: &HttpRequestParts<'_>) -> Value {
    let mut headers = Map::new();
    let mut multi_headers: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (k, v) in header_pairs(req.headers) {
        headers.insert(k.clone(), Value::String(v.clone()));
        multi_headers.entry(k).or_default().push(Value::String(v));
    }
    let pairs = query_pairs(req.query);
    let (qs, mqs) = if pairs.is_empty() {
        (Value::Null, Value::Null)
    } else {
        let mut single = Map::new();
        let mut multi: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for (k, v) in pairs {
            single.insert(k.clone(), Value::String(v.clone()));
            multi.entry(k).or_default().push(Value::String(v));
        }
        (Value::Object(single), json!(multi))
    };
    let resource = if req.proxy.is_some() {
        "/{proxy+}"
    } else {
        "/"
    };
    let path_parameters = match req.proxy {
        Some(p) => json!({ "proxy": p }),
        None => Value::Null,
    };
    let (body, is_b64) = body_field(req.body);
    let user_agent = req
        .headers
        .get(http::header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let host = req
        .headers
        .get(http::header::HOST)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_else(|| "localhost".into());
    json!({
        "resource": resource,
        "path": req.path,
        "httpMethod": req.method,
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": qs,
        "multiValueQueryStringParameters": mqs,
        "pathParameters": path_parameters,
        "stageVariables": null,
        "requestContext": {
            "accountId": crate::error::ACCOUNT,
            "apiId": "porchlight",
            "resourceId": "porchlight",
            "resourcePath": resource,
            "httpMethod": req.method,
            "path": req.path,
            "stage": "$default",
            "domainName": host,
            "domainPrefix": host.split('.').next().unwrap_or(""),
            "requestId": req.request_id,
            "extendedRequestId": req.request_id,
            "protocol": req.protocol,
            "identity": {
                "sourceIp": req.source_ip,
                "userAgent": user_agent,
            },
            "requestTime": request_time(req.now),
            "requestTimeEpoch": (req.now.unix_timestamp_nanos() / 1_000_000) as i64,
        },
        "body": body,
        "isBase64Encoded": is_b64,
    })
}

/// Payload format 2.0 (HTTP API).
pub fn request_v2(req: &HttpRequestParts<'_>) -> Value {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies: Vec<Value> = Vec::new();
    for (k, v) in header_pairs(req.headers) {
        let k = k.to_ascii_lowercase();
        if k == "cookie" {
            cookies.extend(
                v.split(';')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(|c| Value::String(c.to_string())),
            );
            continue;
        }
        headers
            .entry(k)
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let mut qs: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in query_pairs(req.query) {
        qs.entry(k)
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let user_agent = headers.get("user-agent").cloned().unwrap_or_default();
    let host = headers
        .get("host")
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    let mut event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": req.path,
        "rawQueryString": req.query,
        "headers": headers,
        "requestContext": {
            "accountId": crate::error::ACCOUNT,
            "apiId": "porchlight",
            "domainName": host,
            "domainPrefix": host.split('.').next().unwrap_or(""),
            "http": {
                "method": req.method,
                "path": req.path,
                "protocol": req.protocol,
                "sourceIp": req.source_ip,
                "userAgent": user_agent,
            },
            "requestId": req.request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": request_time(req.now),
            "timeEpoch": (req.now.unix_timestamp_nanos() / 1_000_000) as i64,
        },
        "isBase64Encoded": false,
    });
    let obj = event.as_object_mut().expect("object literal");
    if !cookies.is_empty() {
        obj.insert("cookies".into(), Value::Array(cookies));
    }
    if !qs.is_empty() {
        obj.insert("queryStringParameters".into(), json!(qs));
    }
    if let Some(p) = req.proxy {
        obj.insert("pathParameters".into(), json!({ "proxy": p }));
    }
    let (body, is_b64) = body_field(req.body);
    if !body.is_null() {
        obj.insert("body".into(), body);
        obj.insert("isBase64Encoded".into(), Value::Bool(is_b64));
    }
    event
}

/// Why a handler result could not be turned into a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

fn scalar_to_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_status(v: Option<&Value>) -> Result<u16, Malformed> {
    let n = match v {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        _ => None,
    }
    .ok_or(Malformed("statusCode must be an integer"))?;
    if (100..=599).contains(&n) {
        Ok(n as u16)
    } else {
        Err(Malformed("statusCode out of range"))
    }
}

fn parse_structured(obj: &Map<String, Value>, v2: bool) -> Result<HttpReply, Malformed> {
    let status = parse_status(obj.get("statusCode"))?;
    let mut headers = Vec::new();
    match obj.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (k, v) in h {
                headers.push((
                    k.clone(),
                    scalar_to_string(v).ok_or(Malformed("header values must be strings"))?,
                ));
            }
        }
        Some(_) => return Err(Malformed("headers must be an object")),
    }
    match obj.get("multiValueHeaders") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) if !v2 => {
            for (k, vs) in h {
                let Value::Array(vs) = vs else {
                    return Err(Malformed("multiValueHeaders values must be arrays"));
                };
                // Single-value headers with the same name are replaced.
                headers.retain(|(name, _)| !name.eq_ignore_ascii_case(k));
                for v in vs {
                    headers.push((
                        k.clone(),
                        scalar_to_string(v).ok_or(Malformed("header values must be strings"))?,
                    ));
                }
            }
        }
        Some(_) if v2 => {}
        Some(_) => return Err(Malformed("multiValueHeaders must be an object")),
    }
    if v2 {
        match obj.get("cookies") {
            None | Some(Value::Null) => {}
            Some(Value::Array(cs)) => {
                for c in cs {
                    headers.push((
                        "set-cookie".into(),
                        scalar_to_string(c).ok_or(Malformed("cookies must be strings"))?,
                    ));
                }
            }
            Some(_) => return Err(Malformed("cookies must be an array")),
        }
    }
    let is_b64 = match obj.get("isBase64Encoded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Malformed("isBase64Encoded must be a boolean")),
    };
    let body = match obj.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if is_b64 => B64
            .decode(s.as_bytes())
            .map_err(|_| Malformed("body is not valid base64"))?,
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(_) => return Err(Malformed("body must be a string")),
    };
    Ok(HttpReply {
        status,
        headers,
        body,
    })
}

/// Turns a handler result into an HTTP response, as API Gateway does.
pub fn response_from_result(format: PayloadFormat, result: &[u8]) -> Result<HttpReply, Malformed> {
    let value: Value =
        serde_json::from_slice(result).map_err(|_| Malformed("result is not JSON"))?;
    match (format, &value) {
        (_, Value::Object(obj)) if obj.contains_key("statusCode") => {
            parse_structured(obj, format == PayloadFormat::V2)
        }
        (PayloadFormat::V1, _) => Err(Malformed("statusCode is missing")),
        (PayloadFormat::V2, _) => Ok(HttpReply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: result.to_vec(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> HttpRequestParts<'a> {
        HttpRequestParts {
            method: "POST",
            path: "/users",
            proxy: Some("users"),
            query: "a=1&a=2&name=J%C3%B6rg+X",
            headers,
            body,
            source_ip: "127.0.0.1",
            request_id: "rid",
            protocol: "HTTP/1.1",
            now: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().expect("hv"));
        h.append("x-multi", "a".parse().expect("hv"));
        h.append("x-multi", "b".parse().expect("hv"));
        h.insert("cookie", "c1=v1; c2=v2".parse().expect("hv"));
        h
    }

    #[test]
    fn v1_request_has_rest_api_fields() {
        let h = headers();
        let e = request_v1(&parts(&h, br#"{"a":1}"#));
        assert_eq!(e["httpMethod"], "POST");
        assert_eq!(e["path"], "/users");
        assert_eq!(e["resource"], "/{proxy+}");
        assert_eq!(e["pathParameters"]["proxy"], "users");
        assert_eq!(e["headers"]["x-multi"], "b");
        assert_eq!(e["multiValueHeaders"]["x-multi"], json!(["a", "b"]));
        assert_eq!(e["queryStringParameters"]["a"], "2");
        assert_eq!(e["queryStringParameters"]["name"], "Jörg X");
        assert_eq!(e["multiValueQueryStringParameters"]["a"], json!(["1", "2"]));
        assert_eq!(e["body"], r#"{"a":1}"#);
        assert_eq!(e["isBase64Encoded"], false);
        assert_eq!(e["requestContext"]["requestId"], "rid");
        assert_eq!(e["requestContext"]["identity"]["sourceIp"], "127.0.0.1");
        assert_eq!(
            e["requestContext"]["requestTime"],
            "01/Jan/1970:00:00:00 +0000"
        );
    }

    #[test]
    fn v1_binary_body_is_base64_and_empty_query_is_null() {
        let h = HeaderMap::new();
        let mut p = parts(&h, &[0xff, 0x00, 0x80]);
        p.query = "";
        let e = request_v1(&p);
        assert_eq!(e["isBase64Encoded"], true);
        assert_eq!(e["body"], "/wCA");
        assert!(e["queryStringParameters"].is_null());
        assert!(e["multiValueQueryStringParameters"].is_null());
    }

    #[test]
    fn v2_request_joins_duplicates_and_splits_cookies() {
        let h = headers();
        let e = request_v2(&parts(&h, b"hi"));
        assert_eq!(e["version"], "2.0");
        assert_eq!(e["routeKey"], "$default");
        assert_eq!(e["rawPath"], "/users");
        assert_eq!(e["rawQueryString"], "a=1&a=2&name=J%C3%B6rg+X");
        assert_eq!(e["headers"]["x-multi"], "a,b");
        assert!(e["headers"].get("cookie").is_none());
        assert_eq!(e["cookies"], json!(["c1=v1", "c2=v2"]));
        assert_eq!(e["queryStringParameters"]["a"], "1,2");
        assert_eq!(e["requestContext"]["http"]["method"], "POST");
        assert_eq!(e["body"], "hi");
    }

    #[test]
    fn v1_response_with_multi_value_headers_and_base64() {
        let r = response_from_result(
            PayloadFormat::V1,
            br#"{"statusCode":201,"headers":{"x":"1","y":2},"multiValueHeaders":{"set-cookie":["a=1","b=2"]},"body":"aGk=","isBase64Encoded":true}"#,
        )
        .expect("valid");
        assert_eq!(r.status, 201);
        assert_eq!(r.body, b"hi");
        assert!(r.headers.contains(&("y".into(), "2".into())));
        assert_eq!(
            r.headers.iter().filter(|(k, _)| k == "set-cookie").count(),
            2
        );
    }

    #[test]
    fn malformed_results_are_rejected() {
        for bad in [
            &b"not json"[..],
            br#"{"body":"x"}"#,
            br#"{"statusCode":"abc"}"#,
            br#"{"statusCode":200,"body":{"a":1}}"#,
            br#"{"statusCode":200,"headers":[1]}"#,
            br#"[1,2]"#,
        ] {
            assert!(
                response_from_result(PayloadFormat::V1, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn v2_bare_json_becomes_200_application_json() {
        let r = response_from_result(PayloadFormat::V2, br#"{"hello":"world"}"#).expect("valid");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, br#"{"hello":"world"}"#);
        assert_eq!(
            r.headers[0],
            ("content-type".into(), "application/json".into())
        );
        let r = response_from_result(
            PayloadFormat::V2,
            br#"{"statusCode":204,"cookies":["a=1"]}"#,
        )
        .expect("valid");
        assert_eq!(r.status, 204);
        assert_eq!(r.headers, vec![("set-cookie".into(), "a=1".into())]);
        assert!(response_from_result(PayloadFormat::V2, b"nope").is_err());
    }
}
