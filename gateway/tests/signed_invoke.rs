//! SigV4 on the Lambda API with real clients that sign natively: boto3 and
//! the AWS CLI, unchanged, against a local gateway started with
//! `--auth-keys`. Right key, wrong secret, unknown key, unsigned, a key
//! limited to other functions, and a clock skewed past 5 minutes, each with
//! Lambda's error code as the client parses it.

mod common;

use common::{LocalGateway, python_function};

const KEYS: &str = "keys:
  - accessKeyId: AKIDPORCHLIGHTALL
    secretAccessKey: all-functions-secret
  - accessKeyId: AKIDPORCHLIGHTECHO
    secretAccessKey: echo-only-secret
    functions: [echo]
regions: [us-east-1]
";

const ECHO: &str = "def handler(e, c):\n    return e\n";

const BOTO3_SCRIPT: &str = r#"
import datetime, json, sys
import boto3, botocore.auth
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

url = sys.argv[1]
# No retries: a refused signature must surface as it is.
once = Config(retries={"total_max_attempts": 1})

def client(key="AKIDPORCHLIGHTALL", secret="all-functions-secret", config=once, region="us-east-1"):
    return boto3.client("lambda", endpoint_url=url, region_name=region,
                        aws_access_key_id=key, aws_secret_access_key=secret, config=config)

def refused(c, code, status=403, function="echo"):
    try:
        c.invoke(FunctionName=function, Payload=b"{}")
    except ClientError as e:
        got = (e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"])
        assert got == (code, status), (got, e.response)
        return e.response["Error"]["Message"]
    raise SystemExit(f"expected {code}")

c = client()
r = c.invoke(FunctionName="echo", Payload=json.dumps({"signed": True}))
assert r["StatusCode"] == 200 and json.loads(r["Payload"].read()) == {"signed": True}, r
r = c.invoke(FunctionName="arn:aws:lambda:us-east-1:000000000000:function:other", Qualifier="$LATEST", Payload=b'{"n": 1}')
assert json.loads(r["Payload"].read()) == {"n": 1}, r
r = c.invoke(FunctionName="echo", InvocationType="Event", Payload=b"{}")
assert r["StatusCode"] == 202, r
f = c.get_function(FunctionName="echo")["Configuration"]
assert f["Environment"]["Variables"] == {"GREETING": "hi"}, f
assert sorted(x["FunctionName"] for x in c.list_functions()["Functions"]) == ["echo", "other"]

m = refused(client(secret="wrong"), "InvalidSignatureException")
assert "signature we calculated does not match" in m, m
m = refused(client(key="AKIDUNKNOWN"), "UnrecognizedClientException")
assert m == "The security token included in the request is invalid.", m
refused(client(config=Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1})), "MissingAuthenticationTokenException")
m = refused(client(region="eu-west-1"), "InvalidSignatureException")
assert "valid region" in m, m

echo_only = client("AKIDPORCHLIGHTECHO", "echo-only-secret")
assert echo_only.invoke(FunctionName="echo", Payload=b"{}")["StatusCode"] == 200
m = refused(echo_only, "AccessDeniedException", function="other")
assert "AKIDPORCHLIGHTECHO is not authorized to perform: lambda:InvokeFunction" in m, m
assert [x["FunctionName"] for x in echo_only.list_functions()["Functions"]] == ["echo"]

real = botocore.auth.get_current_datetime
for skew, words in ((-6, "Signature expired"), (6, "Signature not yet current")):
    botocore.auth.get_current_datetime = lambda: real() + datetime.timedelta(minutes=skew)
    m = refused(client(), "InvalidSignatureException")
    assert m.startswith(words), m
botocore.auth.get_current_datetime = lambda: real() - datetime.timedelta(minutes=4)
assert client().invoke(FunctionName="echo", Payload=b"{}")["StatusCode"] == 200
print("boto3 signed ok")
"#;

#[test]
fn boto3_and_the_aws_cli_sign_and_lambdas_errors_come_back() {
    let Some(python) = common::sdk_python() else {
        return;
    };
    let dir = common::temp_dir("signed-keys");
    let keys = dir.join("keys.yaml");
    std::fs::write(&keys, KEYS).expect("keys");
    let gw = LocalGateway::start(
        "signed",
        &[
            (
                "echo.yaml",
                python_function("echo", ECHO, "  env:\n    GREETING: hi\n"),
            ),
            ("other.yaml", python_function("other", ECHO, "")),
        ],
        &["--auth-keys", keys.to_str().expect("utf-8 path")],
    );
    let out = std::process::Command::new(&python)
        .args(["-c", BOTO3_SCRIPT, &gw.base])
        .env("HOME", &dir)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "boto3: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );

    // The AWS CLI, configured as `aws configure` would (a credentials file).
    let aws_dir = dir.join(".aws");
    std::fs::create_dir_all(&aws_dir).expect("dir");
    std::fs::write(
        aws_dir.join("credentials"),
        "[default]\naws_access_key_id = AKIDPORCHLIGHTECHO\naws_secret_access_key = echo-only-secret\n[wrong]\naws_access_key_id = AKIDPORCHLIGHTECHO\naws_secret_access_key = not-the-secret\n",
    )
    .expect("credentials");
    std::fs::write(
        aws_dir.join("config"),
        "[default]\nregion = us-east-1\n[profile wrong]\nregion = us-east-1\n",
    )
    .expect("config");
    let aws = python.parent().expect("venv bin").join("aws");
    let outfile = dir.join("out.json");
    let payload = dir.join("in.json");
    std::fs::write(&payload, r#"{"via":"signed-cli"}"#).expect("payload");
    let cli = |profile: &str, function: &str| {
        std::process::Command::new(&aws)
            .args([
                "lambda",
                "invoke",
                "--endpoint-url",
                &gw.base,
                "--profile",
                profile,
            ])
            .args(["--function-name", function, "--payload"])
            .arg(format!("fileb://{}", payload.display()))
            .arg(&outfile)
            .env("HOME", &dir)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_MAX_ATTEMPTS", "1")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .output()
            .expect("aws")
    };
    let ok = cli("default", "echo");
    assert!(
        ok.status.success(),
        "aws cli: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&outfile).expect("out")).expect("json");
    assert_eq!(result, serde_json::json!({"via": "signed-cli"}));
    for (profile, function, code) in [
        ("wrong", "echo", "InvalidSignatureException"),
        ("default", "other", "AccessDeniedException"),
    ] {
        let out = cli(profile, function);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{profile} {function} must fail");
        assert!(
            stderr.contains(&format!("({code})")),
            "{profile} {function}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
