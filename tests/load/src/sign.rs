//! SigV4 signing of invokes, for gateways that require it (`deploy/` does):
//! the credentials come from the environment as for every AWS tool
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` or
//! `AWS_DEFAULT_REGION`). The signer is AWS's own (`aws-sigv4`), so a
//! signed load run also checks the gateway against it.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

/// The region when the environment names none.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Signs requests to the Lambda API (service `lambda`).
#[derive(Clone)]
pub struct Signer {
    identity: Identity,
    region: String,
    access_key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Signer")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .finish()
    }
}

impl Signer {
    /// A signer for this key, scoped to `region`.
    pub fn new(access_key_id: &str, secret_access_key: &str, region: &str) -> Signer {
        let credentials = Credentials::new(
            access_key_id,
            secret_access_key,
            None,
            None,
            "porchlight-load",
        );
        Signer {
            identity: credentials.into(),
            region: region.to_string(),
            access_key_id: access_key_id.to_string(),
        }
    }

    /// A signer from the standard AWS environment variables, or `None`
    /// when no access key is set.
    pub fn from_env() -> Option<Signer> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let key = var("AWS_ACCESS_KEY_ID")?;
        let secret = var("AWS_SECRET_ACCESS_KEY")?;
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        Some(Signer::new(&key, &secret, &region))
    }

    /// The headers that sign a `method` request to `url` with these
    /// `headers` and `body` (`authorization`, `x-amz-date`).
    pub fn headers(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Vec<(String, String)>, String> {
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name("lambda")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let request = SignableRequest::new(
            method,
            url,
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| e.to_string())?;
        let (instructions, _) = sign(request, &params)
            .map_err(|e| e.to_string())?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_with_a_lambda_scope_and_keeps_the_secret_out_of_debug() {
        let s = Signer::new("AKIDLOAD", "sekrit", "eu-west-1");
        let h = s
            .headers(
                "POST",
                "http://127.0.0.1:8080/2015-03-31/functions/hello/invocations",
                &[("content-type", "application/json")],
                b"{}",
            )
            .expect("signed");
        let auth = &h
            .iter()
            .find(|(k, _)| k == "authorization")
            .expect("auth")
            .1;
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDLOAD/"),
            "{auth}"
        );
        assert!(auth.contains("/eu-west-1/lambda/aws4_request"), "{auth}");
        assert!(h.iter().any(|(k, _)| k == "x-amz-date"));
        assert!(!format!("{s:?}").contains("sekrit"));
    }
}
