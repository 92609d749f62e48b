//! Charts are still drawn, without text, when the font is missing.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use porchlight_load::progress::ProgressMode;
use porchlight_load::workload::WeightedFunction;
use porchlight_load::{Load, RunConfig, profile::Profile, run};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn charts_without_a_font_have_no_text_but_exist() {
    let (target, _fake) = common::start(common::Behaviour::default()).await;
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("porchlight-load/no-font");
    let config = RunConfig {
        target,
        functions: vec![WeightedFunction::parse("hello").unwrap()],
        load: Load::Concurrency(Profile::parse("2:0.3s", None).unwrap()),
        payload_size: 10,
        timeout: Duration::from_secs(5),
        max_in_flight: 10,
        out: out.clone(),
        observe_after: Duration::ZERO,
        scale_target: None,
        font: PathBuf::from("/nonexistent/font.ttf"),
        progress: ProgressMode::Quiet,
        signer: None,
    };
    let output = run(config, None, CancellationToken::new()).await.unwrap();
    assert!(!output.report.charts_have_text);
    for chart in ["latency.png", "environments.png"] {
        let bytes = std::fs::read(out.join(chart)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }
}
