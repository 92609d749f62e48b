//! AWS Signature Version 4 on the Lambda API, the way Lambda itself is
//! called: boto3, the AWS CLI and every AWS SDK sign natively, so a caller
//! with `--endpoint-url` changes nothing but its credentials.
//!
//! The verification is the documented algorithm (canonical request, string
//! to sign, HMAC-SHA256 key chain), with `ring` for the digests and a
//! constant-time comparison of the signature. Access keys and what each may
//! invoke come from a small file (a Kubernetes Secret in a cluster).
//! Failures are Lambda's own: `MissingAuthenticationTokenException`,
//! `UnrecognizedClientException`, `IncompleteSignatureException`,
//! `InvalidSignatureException` and `AccessDeniedException`, all 403.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use http::HeaderMap;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use ring::{digest, hmac};
use serde::Deserialize;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use crate::error::{ACCOUNT, GatewayError};

/// The service name in a Lambda credential scope.
pub const SERVICE: &str = "lambda";
/// The only algorithm SigV4 has.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far a request's time may be from the gateway's (Lambda: 5 minutes).
pub const MAX_SKEW: time::Duration = time::Duration::minutes(5);

/// The characters SigV4 leaves unencoded: A-Z a-z 0-9 - _ . ~
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// The same, and `/` (a path keeps its separators).
const UNRESERVED_PATH: &AsciiSet = &UNRESERVED.remove(b'/');

/// The keys file: `keys` (access key id, secret, functions it may invoke:
/// names or `*`) and optionally the `regions` a credential may be scoped
/// to (any when absent).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KeysFile {
    keys: Vec<KeyEntry>,
    #[serde(default)]
    regions: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KeyEntry {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default = "everything")]
    functions: Vec<String>,
}

fn everything() -> Vec<String> {
    vec!["*".into()]
}

/// One access key: its secret and what it may invoke.
struct Key {
    secret: String,
    functions: Vec<String>,
}

/// The access keys the gateway accepts.
pub struct Credentials {
    keys: BTreeMap<String, Key>,
    regions: Option<Vec<String>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("Credentials")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("regions", &self.regions)
            .finish()
    }
}

/// The access keys in force, from a file that is read again when it changes
/// (a mounted Secret is updated in place): keys rotate without a restart.
/// A file that does not exist yet means no keys, so every Lambda API call is
/// refused until it appears; a file that becomes invalid keeps the last
/// valid keys.
pub struct KeyFile {
    path: PathBuf,
    current: RwLock<(Arc<Credentials>, Option<Vec<u8>>)>,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFile")
            .field("path", &self.path)
            .field("credentials", &self.credentials())
            .finish()
    }
}

/// How often a key file is checked for changes.
pub const KEY_FILE_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

impl KeyFile {
    /// Reads `path`; one that does not exist is no keys (yet), one that
    /// cannot be read or parsed is an error.
    pub fn open(path: &Path) -> Result<KeyFile, String> {
        let file = KeyFile {
            path: path.to_path_buf(),
            current: RwLock::new((Arc::new(Credentials::none()), None)),
        };
        file.reload()?;
        Ok(file)
    }

    /// The keys in force.
    pub fn credentials(&self) -> Arc<Credentials> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Reads the file again; `Ok(true)` when the keys changed.
    pub fn reload(&self) -> Result<bool, String> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
        if self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .as_ref()
            == Some(&text)
        {
            return Ok(false);
        }
        let parsed = std::str::from_utf8(&text)
            .map_err(|e| e.to_string())
            .and_then(Credentials::parse)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (Arc::new(parsed), Some(text));
        Ok(true)
    }

    /// Checks the file every [`KEY_FILE_CHECK`] until `stop`.
    pub async fn watch(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        crate::reread::reread_every(KEY_FILE_CHECK, stop, "access keys", || self.reload()).await;
    }
}

/// Who signed a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The access key id.
    pub access_key_id: String,
    /// The region its credential was scoped to.
    pub region: String,
    /// The functions it may invoke (names, or `*`).
    functions: Vec<String>,
}

impl Caller {
    /// Whether this caller may invoke `function` (an address: `name` in the
    /// gateway's home namespace, `namespace.name` elsewhere). A key's
    /// policy lists addresses, `namespace.*` for every function of a
    /// namespace, or `*` for all.
    pub fn may_invoke(&self, function: &str) -> bool {
        self.functions.iter().any(|f| {
            f == "*"
                || f == function
                || f.strip_suffix(".*").is_some_and(|namespace| {
                    function
                        .split_once('.')
                        .is_some_and(|(ns, _)| ns == namespace)
                })
        })
    }

    /// Lambda's `AccessDeniedException` for `function`, unless allowed.
    pub fn check(&self, function: &str) -> Result<(), GatewayError> {
        if self.may_invoke(function) {
            return Ok(());
        }
        Err(GatewayError::AccessDenied(format!(
            "User: arn:aws:iam::{ACCOUNT}:user/{} is not authorized to perform: lambda:InvokeFunction on resource: arn:aws:lambda:{}:{ACCOUNT}:function:{function} because no identity-based policy allows the lambda:InvokeFunction action",
            self.access_key_id, self.region
        )))
    }
}

/// What is signed: the request as it came over the wire.
pub struct SignedRequest<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path as sent (still percent-encoded).
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The body.
    pub body: &'a [u8],
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, PartialEq)]
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

impl Credentials {
    /// Reads a keys file (YAML or JSON).
    pub fn load(path: &Path) -> Result<Credentials, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Credentials::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// No keys: every signed call is from an unknown key.
    pub fn none() -> Credentials {
        Credentials {
            keys: BTreeMap::new(),
            regions: None,
        }
    }

    /// How many access keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Parses a keys file's text.
    pub fn parse(text: &str) -> Result<Credentials, String> {
        let file: KeysFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        if file.keys.is_empty() {
            return Err("no keys: give at least one access key".into());
        }
        let mut keys = BTreeMap::new();
        for k in file.keys {
            if k.access_key_id.is_empty() || k.secret_access_key.is_empty() {
                return Err("every key needs an accessKeyId and a secretAccessKey".into());
            }
            let id = k.access_key_id.clone();
            let key = Key {
                secret: k.secret_access_key,
                functions: k.functions,
            };
            if keys.insert(id.clone(), key).is_some() {
                return Err(format!("access key {id} is listed twice"));
            }
        }
        Ok(Credentials {
            keys,
            regions: file.regions,
        })
    }

    /// Verifies a request's signature at time `now`.
    pub fn verify(
        &self,
        request: &SignedRequest<'_>,
        now: OffsetDateTime,
    ) -> Result<Caller, GatewayError> {
        let Some(header) = request.headers.get(http::header::AUTHORIZATION) else {
            return Err(GatewayError::MissingAuthenticationToken);
        };
        let header = header
            .to_str()
            .map_err(|_| incomplete("Authorization header is not ASCII."))?;
        let auth = parse_authorization(header)?;
        let Some(key) = self.keys.get(auth.access_key_id) else {
            return Err(GatewayError::UnrecognizedClient);
        };
        if auth.service != SERVICE {
            return Err(invalid(format!(
                "Credential should be scoped to correct service: '{SERVICE}'. "
            )));
        }
        if let Some(regions) = &self.regions
            && !regions.iter().any(|r| r == auth.region)
        {
            return Err(invalid(format!(
                "Credential should be scoped to a valid region, not '{}'. ",
                auth.region
            )));
        }
        if !auth.signed_headers.contains(&"host") {
            return Err(invalid(
                "'Host' must be a 'SignedHeader' in the AWS Authorization.".into(),
            ));
        }
        let amz_date = request
            .headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                incomplete("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
            })?;
        let signed_at = parse_amz_date(amz_date).ok_or_else(|| {
            incomplete("X-Amz-Date must be in the ISO-8601 'basic format' (YYYYMMDD'T'HHMMSS'Z').")
        })?;
        if !amz_date.starts_with(auth.date) || auth.date.len() != 8 {
            return Err(invalid(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from '{amz_date}'.",
                auth.date,
                &amz_date[..8]
            )));
        }
        check_skew(amz_date, signed_at, now)?;

        let canonical = canonical_request(request, &auth.signed_headers);
        let scope = format!(
            "{}/{}/{}/aws4_request",
            auth.date, auth.region, auth.service
        );
        let string_to_sign = format!(
            "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
            hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
        );
        let signing_key = signing_key(&key.secret, auth.date, auth.region, auth.service);
        let given = unhex(auth.signature).ok_or_else(signature_mismatch)?;
        hmac::verify(&signing_key, string_to_sign.as_bytes(), &given)
            .map_err(|_| signature_mismatch())?;
        Ok(Caller {
            access_key_id: auth.access_key_id.to_string(),
            region: auth.region.to_string(),
            functions: key.functions.clone(),
        })
    }
}

fn incomplete(message: &str) -> GatewayError {
    GatewayError::IncompleteSignature(message.into())
}

fn invalid(message: String) -> GatewayError {
    GatewayError::InvalidSignature(message)
}

fn signature_mismatch() -> GatewayError {
    invalid("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.".into())
}

fn parse_authorization(header: &str) -> Result<Authorization<'_>, GatewayError> {
    let Some(rest) = header
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
    else {
        return Err(incomplete(
            "Authorization header requires the AWS4-HMAC-SHA256 algorithm.",
        ));
    };
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let missing = |name: &str| {
        incomplete(&format!(
            "Authorization header requires '{name}' parameter. Authorization={header}"
        ))
    };
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed = signed.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = scope[..] else {
        return Err(incomplete(&format!(
            "Credential should be of the form ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request, not '{credential}'."
        )));
    };
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        signed_headers: signed.split(';').collect(),
        signature,
    })
}

/// `20150830T123600Z` as a UTC time.
fn parse_amz_date(s: &str) -> Option<OffsetDateTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let month = Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?;
    let date =
        Date::from_calendar_date(i32::try_from(num(0..4)?).ok()?, month, num(6..8)? as u8).ok()?;
    let time = Time::from_hms(num(9..11)? as u8, num(11..13)? as u8, num(13..15)? as u8).ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_utc())
}

fn amz_format(t: OffsetDateTime) -> String {
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Lambda's messages for a request signed too long ago or too far ahead.
fn check_skew(
    amz_date: &str,
    signed_at: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<(), GatewayError> {
    if signed_at < now - MAX_SKEW {
        return Err(invalid(format!(
            "Signature expired: {amz_date} is now earlier than {} ({} - 5 min.)",
            amz_format(now - MAX_SKEW),
            amz_format(now)
        )));
    }
    if signed_at > now + MAX_SKEW {
        return Err(invalid(format!(
            "Signature not yet current: {amz_date} is still later than {} ({} + 5 min.)",
            amz_format(now + MAX_SKEW),
            amz_format(now)
        )));
    }
    Ok(())
}

/// The canonical request. For every service but S3 the path is encoded
/// again as it came (botocore and the SDKs sign `%3A` as `%253A`).
fn canonical_request(request: &SignedRequest<'_>, signed_headers: &[&str]) -> String {
    let path = if request.path.is_empty() {
        "/"
    } else {
        request.path
    };
    let uri = utf8_percent_encode(path, UNRESERVED_PATH).to_string();
    let headers: String = signed_headers
        .iter()
        .map(|name| format!("{name}:{}\n", header_value(request.headers, name)))
        .collect();
    format!(
        "{}\n{uri}\n{}\n{headers}\n{}\n{}",
        request.method,
        canonical_query(request.query),
        signed_headers.join(";"),
        hex(digest::digest(&digest::SHA256, request.body).as_ref())
    )
}

/// Every value of a header, trimmed, inner runs of spaces made one, joined by `,`.
fn header_value(headers: &HeaderMap, name: &str) -> String {
    headers
        .get_all(name)
        .iter()
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Query parameters decoded, encoded the SigV4 way, sorted by name then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let enc = |s: &str| {
                let decoded = percent_decode_str(s).collect::<Vec<u8>>();
                percent_encoding::percent_encode(&decoded, UNRESERVED).to_string()
            };
            (enc(k), enc(v))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let step = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
    };
    let k_date = step(format!("AWS4{secret}").as_bytes(), date);
    let k_region = step(k_date.as_ref(), region);
    let k_service = step(k_region.as_ref(), service);
    let k_signing = step(k_service.as_ref(), "aws4_request");
    hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn at(s: &str) -> OffsetDateTime {
        parse_amz_date(s).expect("date")
    }

    /// The AWS SigV4 test suite's `post-vanilla-query` case, for service
    /// `service`: the expected canonical request and signature are the
    /// suite's.
    #[test]
    fn the_aws_test_suite_signature_is_reproduced() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.amazonaws.com"));
        headers.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        let request = SignedRequest {
            method: "POST",
            path: "/",
            query: "Param1=value1",
            headers: &headers,
            body: b"",
        };
        let canonical = canonical_request(&request, &["host", "x-amz-date"]);
        assert_eq!(
            canonical,
            "POST\n/\nParam1=value1\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830",
            "us-east-1",
            "service",
        );
        let sts = format!(
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n{}",
            hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
        );
        assert_eq!(
            hex(hmac::sign(&key, sts.as_bytes()).as_ref()),
            "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"
        );
    }

    #[test]
    fn queries_and_paths_are_canonical() {
        assert_eq!(canonical_query("b=2&a=%7e&a=1&c"), "a=1&a=~&b=2&c=");
        assert_eq!(
            canonical_query("Qualifier=%24LATEST"),
            "Qualifier=%24LATEST"
        );
        let headers = HeaderMap::new();
        let request = SignedRequest {
            method: "GET",
            path: "/2015-03-31/functions/arn%3Aaws%3Alambda/invocations",
            query: "",
            headers: &headers,
            body: b"",
        };
        assert!(
            canonical_request(&request, &[])
                .starts_with("GET\n/2015-03-31/functions/arn%253Aaws%253Alambda/invocations\n")
        );
    }

    #[test]
    fn authorization_headers_are_parsed_or_refused_as_incomplete() {
        let a = parse_authorization("AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=abcd").expect("parses");
        assert_eq!(
            (a.access_key_id, a.date, a.region, a.service, a.signature),
            ("AKID", "20150830", "us-east-1", "lambda", "abcd")
        );
        assert_eq!(a.signed_headers, vec!["host", "x-amz-date"]);
        for bad in [
            "Basic dXNlcjpwYXNz",
            "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=ab",
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/lambda, SignedHeaders=host, Signature=ab",
        ] {
            assert!(
                matches!(
                    parse_authorization(bad),
                    Err(GatewayError::IncompleteSignature(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn skew_beyond_five_minutes_is_refused_with_lambdas_messages() {
        let now = at("20150830T123600Z");
        assert!(check_skew("20150830T123100Z", at("20150830T123100Z"), now).is_ok());
        let Err(GatewayError::InvalidSignature(m)) =
            check_skew("20150830T123059Z", at("20150830T123059Z"), now)
        else {
            panic!("expired")
        };
        assert_eq!(
            m,
            "Signature expired: 20150830T123059Z is now earlier than 20150830T123100Z (20150830T123600Z - 5 min.)"
        );
        assert!(matches!(
            check_skew("20150830T124101Z", at("20150830T124101Z"), now),
            Err(GatewayError::InvalidSignature(m)) if m.starts_with("Signature not yet current")
        ));
        assert!(parse_amz_date("20150830T1236Z").is_none());
        assert!(parse_amz_date("2015083aT123600Z").is_none());
        assert!(parse_amz_date("20151330T123600Z").is_none());
    }

    #[test]
    fn keys_files_are_checked() {
        let c = Credentials::parse(
            "keys:\n  - {accessKeyId: AKID, secretAccessKey: sekrit1}\n  - {accessKeyId: ONLY, secretAccessKey: sekrit2, functions: [hello]}\nregions: [us-east-1]\n",
        )
        .expect("valid");
        assert!(!format!("{c:?}").contains("sekrit"), "no secret in {c:?}");
        assert_eq!(c.keys["AKID"].functions, vec!["*"]);
        for bad in [
            "keys: []",
            "keys:\n  - {accessKeyId: A, secretAccessKey: ''}",
            "keys:\n  - {accessKeyId: A, secretAccessKey: s}\n  - {accessKeyId: A, secretAccessKey: t}",
            "keys:\n  - {accessKeyId: A, secretAccessKey: s, extra: 1}",
        ] {
            assert!(Credentials::parse(bad).is_err(), "{bad}");
        }
        let caller = Caller {
            access_key_id: "ONLY".into(),
            region: "us-east-1".into(),
            functions: vec!["hello".into()],
        };
        assert!(caller.check("hello").is_ok());
        assert!(matches!(
            caller.check("other"),
            Err(GatewayError::AccessDenied(m)) if m.contains("user/ONLY") && m.contains("function:other")
        ));
    }

    #[test]
    fn key_files_appear_rotate_and_survive_a_bad_edit() {
        let dir = std::env::temp_dir().join(format!("porchlight-keyfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("keys.yaml");
        let file = KeyFile::open(&path).expect("a missing file is no keys yet");
        assert!(file.credentials().is_empty());
        assert_eq!(file.reload(), Ok(false));

        std::fs::write(&path, "keys:\n  - {accessKeyId: A, secretAccessKey: s}\n").expect("write");
        assert_eq!(file.reload(), Ok(true));
        assert!(file.credentials().keys.contains_key("A"));
        assert_eq!(file.reload(), Ok(false), "unchanged");

        std::fs::write(&path, "keys: [").expect("write");
        assert!(file.reload().is_err());
        assert!(
            file.credentials().keys.contains_key("A"),
            "the last valid keys stay"
        );

        std::fs::write(&path, "keys:\n  - {accessKeyId: B, secretAccessKey: t}\n").expect("write");
        assert_eq!(file.reload(), Ok(true));
        assert!(!file.credentials().keys.contains_key("A"));
        assert!(file.credentials().keys.contains_key("B"));

        std::fs::write(&path, "keys: [").expect("write");
        assert!(
            KeyFile::open(&path).is_err(),
            "invalid at start is an error"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn policies_name_functions_per_namespace() {
        let caller = |functions: &[&str]| Caller {
            access_key_id: "K".into(),
            region: "us-east-1".into(),
            functions: functions.iter().map(|f| f.to_string()).collect(),
        };
        let team = caller(&["team-b.*", "hello"]);
        assert!(team.may_invoke("team-b.hello"));
        assert!(team.may_invoke("team-b.other"));
        assert!(team.may_invoke("hello"), "home namespace by bare name");
        assert!(!team.may_invoke("team-c.hello"));
        assert!(!team.may_invoke("other"));
        assert!(
            !team.may_invoke("team-bb.hello"),
            "a prefix is not a namespace"
        );
        let one = caller(&["team-b.hello"]);
        assert!(one.may_invoke("team-b.hello"));
        assert!(!one.may_invoke("hello"), "same name, other namespace");
        assert!(caller(&["*"]).may_invoke("team-c.x"));
    }
}
